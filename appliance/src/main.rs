//! `holdfast`: the appliance binary. Today it carries the store CLI (`holdfast store …`) and the
//! KVM CLI (`holdfast kvm …`); the service (`holdfast serve`), job engine and catalog come next.
//! Errors reach the user here, once, with their whole cause chain.

mod kvm_cli;
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
    /// KVM through libvirt: test a connection, list VMs, back a VM up into a store.
    Kvm(kvm_cli::KvmArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Store(args) => store_cli::run(args),
        Command::Kvm(args) => kvm_cli::run(args),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("holdfast: {e:#}");
            std::process::exit(1);
        }
    }
}
