//! `holdfast`: the appliance binary: the store CLI (`holdfast store …`), the platform CLI
//! (`holdfast platform …`, any kind the build has), the service (`holdfast serve`: catalog, job engine, HTTPS API) and its
//! command-line client (`holdfast client …`).
//! Errors reach the user here, once, with their whole cause chain.

mod client_cli;
mod nfs;
mod platform_cli;
mod restore_args;
mod service;
mod store_cli;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "holdfast", version, about = "Holdfast agentless VM backup appliance")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Work with a backup store directly: create, ingest images, list, export, verify, prune, gc.
    Store(store_cli::StoreArgs),
    /// A platform without the service: test a connection, list VMs and the inventory, back VMs
    /// up into a store, restore a point.
    Platform(platform_cli::PlatformArgs),
    /// Run the appliance service: catalog, job engine and the HTTPS API.
    Serve(ServeArgs),
    /// Drive a running appliance through its API with an API token: jobs, backups, restores,
    /// rules, points.
    Client(client_cli::ClientArgs),
    /// On the appliance's shell: give a user (the last admin, locked out or with a forgotten
    /// password) a new password, printed once, to be changed at the next login.
    ResetPassword {
        /// [env: HOLDFAST_DATA; default /var/lib/holdfast]
        #[arg(long)]
        data_dir: Option<std::path::PathBuf>,
        /// [env: HOLDFAST_CATALOG; default: SQLite in the data directory]
        #[arg(long)]
        catalog: Option<String>,
        #[arg(long, default_value = "admin")]
        user: String,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Where the store, the catalog, the TLS certificate and the keys live
    /// [env: HOLDFAST_DATA; default /var/lib/holdfast]
    #[arg(long)]
    data_dir: Option<std::path::PathBuf>,
    /// The catalog database: postgres://USER:PASSWORD@HOST/DB, or sqlite://PATH
    /// [env: HOLDFAST_CATALOG; default: SQLite in the data directory]
    #[arg(long)]
    catalog: Option<String>,
    /// Address and port of the HTTPS API
    #[arg(long, default_value = "127.0.0.1:8443")]
    listen: String,
    /// Backup jobs running at once; more wait as queued
    #[arg(long, default_value_t = 8)]
    max_jobs: usize,
    /// Backup jobs running at once against one platform (hypervisor host)
    #[arg(long, default_value_t = 4)]
    max_jobs_per_host: usize,
    /// Address and port of the NFS server that exports restore points (instant recovery)
    #[arg(long, default_value = "0.0.0.0:2049")]
    nfs_listen: String,
    /// Address and port of its portmapper, which QEMU, libvirt and ESXi ask for the NFS and
    /// MOUNT ports (they look on 111); "off" for none
    #[arg(long, default_value = "0.0.0.0:111")]
    portmap_listen: String,
}

fn main() {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve(_)) {
        // A command line piped into `head` or `grep -q` ends quietly when the pipe closes, as
        // other Unix tools do, instead of panicking on a failed print. (The service keeps
        // Rust's default: a vanished reader of any of its pipes must not end it.)
        // SAFETY: restoring a signal's default disposition before any thread starts.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let result = match cli.command {
        Command::Store(args) => store_cli::run(args),
        Command::Platform(args) => platform_cli::run(args),
        Command::Client(args) => client_cli::run(args),
        Command::ResetPassword { data_dir, catalog, user } => service::reset_password_on_shell(
            &data_dir_of(data_dir),
            catalog.or_else(|| std::env::var("HOLDFAST_CATALOG").ok()),
            &user,
        ),
        Command::Serve(a) => service::run(service::ServeOptions {
            data_dir: data_dir_of(a.data_dir),
            catalog: a.catalog.or_else(|| std::env::var("HOLDFAST_CATALOG").ok()),
            listen: a.listen,
            max_jobs: a.max_jobs,
            max_jobs_per_host: a.max_jobs_per_host,
            nfs_listen: a.nfs_listen,
            portmap_listen: Some(a.portmap_listen).filter(|p| p != "off"),
        }),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("holdfast: {e:#}");
            std::process::exit(1);
        }
    }
}

/// --data-dir, else $HOLDFAST_DATA, else /var/lib/holdfast.
fn data_dir_of(given: Option<std::path::PathBuf>) -> std::path::PathBuf {
    given.or_else(|| std::env::var_os("HOLDFAST_DATA").map(Into::into)).unwrap_or_else(|| "/var/lib/holdfast".into())
}
