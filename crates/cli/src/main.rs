//! The `artifactstore` binary: `serve` runs the server; every other command is a client of
//! its HTTP API (never of the stores), so whatever it does, curl can do too.

mod client;
mod commands;
mod progress;
mod pull;
mod push;
mod tags;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use client::{CliError, Client};

#[derive(Parser)]
#[command(
    name = "artifactstore",
    version,
    about = "A content-addressed artifact store: server and client",
    after_help = "Connection: --url/--token/--ca-cert, else ARTIFACTSTORE_URL/ARTIFACTSTORE_TOKEN/\
                  ARTIFACTSTORE_CA_CERT, else url/token/ca_cert in \
                  ~/.config/artifactstore/config.toml, else http://127.0.0.1:8080. https:// URLs \
                  are verified against the system's roots plus --ca-cert.\n\
                  Exit codes: 0 ok, 1 other, 2 usage or rejected input, 3 auth, 4 not found, \
                  5 conflict, 6 integrity, 7 network."
)]
struct Cli {
    /// Server URL.
    #[arg(long, global = true, env = "ARTIFACTSTORE_URL")]
    url: Option<String>,
    /// Bearer token.
    #[arg(
        long,
        global = true,
        env = "ARTIFACTSTORE_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    /// PEM file of CA certificates trusted for https:// besides the system's roots.
    #[arg(long, global = true, env = "ARTIFACTSTORE_CA_CERT")]
    ca_cert: Option<std::path::PathBuf>,
    /// Machine-readable output (JSON) and no progress.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (SQLite + a local blob directory by default).
    #[command(
        after_help = "Example:\n  ARTIFACTSTORE_TOKENS=acme:secret artifactstore serve --listen 127.0.0.1:8080"
    )]
    Serve(Box<artifactstore_server::ServeArgs>),
    /// Upload a directory as a package, then finalize it.
    Push(push::PushArgs),
    /// Download every file of a finalized package, verified against its manifest.
    Pull(pull::PullArgs),
    /// Print a package's manifest (CBOR, JSON or a table).
    Manifest(commands::ManifestArgs),
    /// List packages, newest first, with the API's filters.
    Ls(commands::LsArgs),
    /// Show one package.
    #[command(after_help = "Example:\n  artifactstore show pkg_01JZ3NDEKTSV4RRFFQ69G5FAVA")]
    Show {
        /// Package id, or REPO:TAG.
        id: String,
    },
    /// Print events as JSON lines; --follow keeps tailing.
    Events(commands::EventsArgs),
    /// Delete packages (a held one is refused); their bytes are reclaimed later.
    #[command(after_help = "Example:\n  artifactstore rm pkg_01JZ3NDEKTSV4RRFFQ69G5FAVA")]
    Rm {
        /// Package ids.
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Hold a package: neither a request nor a retention rule deletes it.
    Hold {
        /// Package id.
        id: String,
    },
    /// Release a package's hold.
    Release {
        /// Package id.
        id: String,
    },
    /// Show this tenant's usage (bytes, packages, open uploads) and quotas.
    Usage,
    /// Point REPO:TAG at a finalized package (creating or moving the tag).
    #[command(
        after_help = "Example:\n  artifactstore tag pkg_01JZ3NDEKTSV4RRFFQ69G5FAVA app:latest"
    )]
    Tag {
        /// Package id, or REPO:TAG of the package to tag.
        package: String,
        /// REPO:TAG to set.
        reference: String,
    },
    /// Delete a tag (the package stays).
    Untag {
        /// REPO:TAG.
        reference: String,
    },
    /// List the tenant's tags, or one repository's.
    Tags {
        /// Only this repository.
        repository: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Serve(_)) {
        artifactstore_server::tune_allocator();
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(client::exit::OTHER);
        }
    };
    if let Command::Serve(args) = cli.command {
        artifactstore_server::init_tracing();
        return match runtime.block_on(artifactstore_server::serve(*args)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(client::exit::USAGE)
            }
        };
    }
    let connection = client::Connection {
        url: cli.url,
        token: cli.token,
        ca_cert: cli.ca_cert,
    };
    match runtime.block_on(run(connection, cli.json, cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", e.to_string().replace('\n', " "));
            ExitCode::from(e.exit_code())
        }
    }
}

async fn run(connection: client::Connection, json: bool, command: Command) -> Result<(), CliError> {
    let client = Client::new(connection)?;
    match command {
        Command::Serve(_) => Ok(()),
        Command::Push(args) => push::run(&client, args, json).await,
        Command::Pull(args) => pull::run(&client, args, json).await,
        Command::Manifest(args) => commands::manifest(&client, args).await,
        Command::Ls(args) => commands::ls(&client, args, json).await,
        Command::Show { id } => commands::show(&client, &id).await,
        Command::Events(args) => commands::events(&client, args).await,
        Command::Rm { ids } => commands::rm(&client, &ids, json).await,
        Command::Hold { id } => commands::hold(&client, &id, true, json).await,
        Command::Release { id } => commands::hold(&client, &id, false, json).await,
        Command::Usage => commands::usage(&client, json).await,
        Command::Tag { package, reference } => tags::tag(&client, &package, &reference, json).await,
        Command::Untag { reference } => tags::untag(&client, &reference, json).await,
        Command::Tags { repository } => tags::list(&client, repository.as_deref(), json).await,
    }
}
