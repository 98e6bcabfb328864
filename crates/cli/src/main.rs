//! The `artifactstore` binary: `serve` runs the server; the client commands arrive with the
//! CLI issue and talk to a server only through its HTTP API.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "artifactstore",
    version,
    about = "A content-addressed artifact store"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (SQLite + a local blob directory by default).
    ///
    /// Example: ARTIFACTSTORE_TOKENS=acme:secret artifactstore serve --listen 127.0.0.1:8080
    Serve(artifactstore_server::ServeArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Serve(args) => {
            artifactstore_server::init_tracing();
            match runtime.block_on(artifactstore_server::serve(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
            }
        }
    }
}
