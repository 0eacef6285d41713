#[tokio::main]
async fn main() -> std::process::ExitCode {
    olps::cli::main().await
}
