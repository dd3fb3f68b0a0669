//! `verbund`: one command per role. Parses arguments, sets up logging, hands over to the
//! library.

use clap::Parser;
use verbund_cli::{Cli, run};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    verbund_cli::init_tracing(&cli);
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(verbund_cli::exit_code(&e))
        }
    }
}
