//! The demo's learning curve as an SVG: rolling prequential accuracy per model version, with the
//! drift, the bad feed and the rollback marked.

use std::path::Path;

use plotters::prelude::*;

/// A vertical marker at a version, with its label.
pub struct Marker {
    pub version: f64,
    pub label: String,
    pub color: RGBColor,
}

/// Writes the curve `(version, accuracy)` with markers to `path`.
pub fn learning_curve(
    path: &Path,
    title: &str,
    points: &[(f64, f64)],
    markers: &[Marker],
) -> anyhow::Result<()> {
    let max_version = points.iter().map(|p| p.0).fold(1.0, f64::max);
    let root = SVGBackend::new(path, (960, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..max_version + 1.0, 0f64..1f64)?;
    chart
        .configure_mesh()
        .x_desc("model version")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_desc("rolling prequential accuracy")
        .draw()?;
    chart
        .draw_series(LineSeries::new(
            points.iter().copied(),
            BLUE.stroke_width(2),
        ))?
        .label("accuracy (predicted before the label arrived)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    for marker in markers {
        let color = marker.color;
        chart
            .draw_series(LineSeries::new(
                [(marker.version, 0.0), (marker.version, 1.0)],
                color.stroke_width(1),
            ))?
            .label(marker.label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
