//! The demo's fraud-style transaction stream, generated from a seed: a few numeric and
//! categorical features, and a fraud label whose pattern changes partway through.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Which fraud pattern labels a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    /// Large card-not-present purchases from unusual countries.
    CrossBorder,
    /// Small, fast, night-time gaming purchases (card testing); large foreign purchases are now
    /// mostly legitimate travel.
    CardTesting,
}

#[derive(Debug, Clone)]
pub struct Transaction {
    pub id: usize,
    pub features: Vec<(String, f64)>,
    /// The true label (1 = fraud).
    pub fraud: bool,
}

const COUNTRIES: [(&str, f64); 6] = [
    ("US", 0.55),
    ("GB", 0.12),
    ("DE", 0.1),
    ("FR", 0.08),
    ("NG", 0.08),
    ("BR", 0.07),
];
const MERCHANTS: [&str; 5] = ["grocery", "electronics", "travel", "gaming", "fashion"];

fn normal(rng: &mut StdRng) -> f64 {
    let u1: f64 = rng.gen_range(f64::EPSILON..1.0);
    let u2: f64 = rng.gen();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

pub struct Generator {
    rng: StdRng,
    next_id: usize,
}

impl Generator {
    pub fn new(seed: u64) -> Generator {
        Generator {
            rng: StdRng::seed_from_u64(seed),
            next_id: 0,
        }
    }

    pub fn next(&mut self, pattern: Pattern) -> Transaction {
        let rng = &mut self.rng;
        let amount = (3.6 + 1.3 * normal(rng)).exp().min(20_000.0);
        let hour = rng.gen_range(0..24);
        let mut pick = rng.gen::<f64>();
        let mut country = COUNTRIES[0].0;
        for (c, p) in COUNTRIES {
            if pick < p {
                country = c;
                break;
            }
            pick -= p;
        }
        let merchant = MERCHANTS[rng.gen_range(0..MERCHANTS.len())];
        let card_present = rng.gen_bool(0.6);
        let velocity = rng.gen_range(0..10) as f64;
        let night = hour < 6;
        let foreign = matches!(country, "NG" | "BR");
        let b = |x: bool| if x { 1.0 } else { 0.0 };
        let score = match pattern {
            Pattern::CrossBorder => {
                -2.2 + 2.6 * b(amount > 300.0)
                    + 2.4 * b(foreign)
                    + 1.6 * b(!card_present)
                    + 0.15 * velocity
            }
            Pattern::CardTesting => {
                -2.6 + 2.8 * b(merchant == "gaming")
                    + 2.2 * b(night)
                    + 1.4 * b(amount < 20.0)
                    + 0.25 * velocity
                    - 1.5 * b(amount > 300.0)
            }
        };
        let fraud = score + 0.3 * normal(rng) > 0.0;
        let features = vec![
            ("amount".to_string(), (amount * 100.0).round() / 100.0),
            ("hour".to_string(), hour as f64),
            ("night".to_string(), b(night)),
            (format!("country={country}"), 1.0),
            (format!("merchant={merchant}"), 1.0),
            ("card_present".to_string(), b(card_present)),
            ("velocity_1h".to_string(), velocity),
        ];
        let id = self.next_id;
        self.next_id += 1;
        Transaction {
            id,
            features,
            fraud,
        }
    }
}
