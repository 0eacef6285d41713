// refinery::embed_migrations! (src/schema.rs) reads migrations/ at compile time, but cargo only
// tracks the files that existed then: without this, a new migration file is left out of an
// incremental build until some source file changes.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
