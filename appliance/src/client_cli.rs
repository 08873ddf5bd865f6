//! `holdfast client …`: the command line as a client of a running appliance's API, with an API
//! token (POST /api/tokens), so scripts and shells do what the web UI does: jobs, backups,
//! restores, rules, points, and any other call of the API.

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use std::path::PathBuf;
use web::ApiClient;

#[derive(Args)]
pub struct ClientArgs {
    /// The appliance: https://HOST[:PORT] [env: HOLDFAST_SERVER; default https://127.0.0.1:8443]
    #[arg(long)]
    server: Option<String>,
    /// The appliance's certificate (or its CA), PEM [env: HOLDFAST_CA; default: the local
    /// appliance's, /var/lib/holdfast/tls/cert.pem]
    #[arg(long)]
    ca: Option<PathBuf>,
    /// A file holding the API token [default: env HOLDFAST_TOKEN]
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Print the API's JSON instead of lines
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: ClientCommand,
}

#[derive(Subcommand)]
enum ClientCommand {
    /// Jobs, newest first
    Jobs,
    /// One job, with its log
    Job { id: i64 },
    /// Back a VM up now
    Backup {
        #[arg(long)]
        platform: i64,
        #[arg(long)]
        vm: String,
        /// full, incremental or differential
        #[arg(long = "type", default_value = "incremental")]
        backup_type: String,
        /// Wait for the job to end; the exit status says how it ended
        #[arg(long)]
        wait: bool,
    },
    /// Restore a point as a new VM, or in place onto its (shut off) VM
    Restore {
        #[arg(long)]
        point: String,
        #[arg(long)]
        platform: i64,
        #[command(flatten)]
        to: crate::restore_args::RestoreTo,
        #[arg(long)]
        wait: bool,
    },
    /// Stop a queued or running job
    Stop { id: i64 },
    /// Backup rules
    Rules,
    /// Run a rule now
    RunRule {
        id: i64,
        #[arg(long = "type", default_value = "incremental")]
        backup_type: String,
        #[arg(long)]
        wait: bool,
    },
    /// Restore points, newest first
    Points,
    /// Any API call: METHOD PATH [JSON body]; prints the reply
    Call { method: String, path: String, body: Option<String> },
}

struct Session {
    api: ApiClient,
    rt: tokio::runtime::Runtime,
}

impl Session {
    /// A call that must succeed: an error status becomes an error naming the call and the
    /// API's message.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        let (status, v) = self.rt.block_on(self.api.call(method, path, body.as_ref())).map_err(|e| anyhow!(e))?;
        if status >= 400 {
            let msg = v["error"].as_str().map(str::to_string).unwrap_or_else(|| v.to_string());
            bail!("{method} {path}: {status}: {msg}");
        }
        Ok(v)
    }

    /// Follows a job until it ends (progress on stderr); true when it completed.
    fn wait(&self, id: i64) -> Result<bool> {
        let mut last = String::new();
        loop {
            let j = self.call("GET", &format!("/api/jobs/{id}"), None)?;
            let line = format!(
                "job {id}: {} {:.0}%",
                j["state"].as_str().unwrap_or("?"),
                j["percent"].as_f64().unwrap_or(0.0)
            );
            if line != last {
                eprintln!("{line}");
                last = line;
            }
            if !j["finished"].is_null() {
                println!("{}", job_line(&j));
                return Ok(j["state"] == "completed");
            }
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    }
}

fn job_line(j: &Value) -> String {
    let s = |k: &str| j[k].as_str().unwrap_or("-").to_string();
    let mut line = format!(
        "{:>5} {:<7} {:<12} {:<14} {:>5.1}% {} point {}",
        j["id"],
        s("kind"),
        s("type"),
        s("state"),
        j["percent"].as_f64().unwrap_or(0.0),
        s("vm"),
        s("point_id")
    );
    if let Some(e) = j["error"].as_str() {
        line += &format!(" — {e}");
    }
    line
}

fn token(args: &ClientArgs) -> Result<String> {
    let t = match &args.token_file {
        Some(f) => std::fs::read_to_string(f).with_context(|| format!("reading the token file {}", f.display()))?,
        None => std::env::var("HOLDFAST_TOKEN").map_err(|_| {
            anyhow!("no API token: set HOLDFAST_TOKEN or use --token-file (make one: POST /api/tokens)")
        })?,
    };
    Ok(t.trim().to_string())
}

pub fn run(args: ClientArgs) -> Result<i32> {
    let server = args
        .server
        .clone()
        .or_else(|| std::env::var("HOLDFAST_SERVER").ok())
        .unwrap_or_else(|| "https://127.0.0.1:8443".into());
    let ca = args
        .ca
        .clone()
        .or_else(|| std::env::var_os("HOLDFAST_CA").map(PathBuf::from))
        .unwrap_or_else(|| "/var/lib/holdfast/tls/cert.pem".into());
    let pem = std::fs::read(&ca).with_context(|| format!("reading the appliance's certificate {}", ca.display()))?;
    let api = ApiClient::new(&server, &token(&args)?, &pem).map_err(|e| anyhow!(e))?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let s = Session { api, rt };
    let print_rows = |v: &Value, line: &dyn Fn(&Value) -> String| {
        if args.json {
            println!("{}", serde_json::to_string_pretty(v).expect("JSON prints"));
        } else {
            for row in v.as_array().into_iter().flatten() {
                println!("{}", line(row));
            }
        }
    };
    // A job just queued: print it, or follow it with --wait.
    let started = |j: &Value, wait: bool| -> Result<i32> {
        let id = j["id"].as_i64().ok_or_else(|| anyhow!("the reply names no job: {j}"))?;
        if wait {
            return Ok(if s.wait(id)? { 0 } else { 1 });
        }
        if args.json {
            println!("{j}");
        } else {
            println!("{}", job_line(j));
        }
        Ok(0)
    };
    match &args.command {
        ClientCommand::Jobs => print_rows(&s.call("GET", "/api/jobs", None)?, &job_line),
        ClientCommand::Job { id } => {
            let j = s.call("GET", &format!("/api/jobs/{id}"), None)?;
            let log = s.call("GET", &format!("/api/jobs/{id}/log"), None)?;
            if args.json {
                println!("{}", json!({ "job": j, "log": log }));
            } else {
                println!("{}", job_line(&j));
                for l in log.as_array().into_iter().flatten() {
                    println!(
                        "  {} {:<7} {}",
                        l["time"].as_str().unwrap_or(""),
                        l["level"].as_str().unwrap_or(""),
                        l["message"].as_str().unwrap_or("")
                    );
                }
            }
        }
        ClientCommand::Backup { platform, vm, backup_type, wait } => {
            let j =
                s.call("POST", "/api/jobs", Some(json!({ "platform": platform, "vm": vm, "type": backup_type })))?;
            return started(&j, *wait);
        }
        ClientCommand::Restore { point, platform, to, wait } => {
            // The API's NewRestore: these settings, with a mode instead of the --in-place flag.
            let mut body = serde_json::to_value(to)?;
            let mode = if to.in_place { "in_place" } else { "new_vm" };
            (body["point"], body["platform"], body["mode"]) = (json!(point), json!(platform), json!(mode));
            let j = s.call("POST", "/api/restores", Some(body))?;
            return started(&j, *wait);
        }
        ClientCommand::Stop { id } => {
            let j = s.call("POST", &format!("/api/jobs/{id}/stop"), Some(json!({})))?;
            println!("{}", job_line(&j));
        }
        ClientCommand::Rules => print_rows(&s.call("GET", "/api/rules", None)?, &|r| {
            let vms: Vec<&str> = r["vms"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
            let on = if r["enabled"] == json!(false) { "disabled" } else { "enabled" };
            format!(
                "{:>4} {:<20} {on:<8} platform {} VMs {}",
                r["id"],
                r["name"].as_str().unwrap_or(""),
                r["platform"],
                vms.join(", ")
            )
        }),
        ClientCommand::RunRule { id, backup_type, wait } => {
            let jobs = s.call("POST", &format!("/api/rules/{id}/run"), Some(json!({ "type": backup_type })))?;
            let mut code = 0;
            for j in jobs.as_array().into_iter().flatten() {
                code = code.max(started(j, *wait)?);
            }
            return Ok(code);
        }
        ClientCommand::Points => print_rows(&s.call("GET", "/api/points", None)?, &|p| {
            let s = |k: &str| p[k].as_str().unwrap_or("-").to_string();
            format!(
                "{} {:<12} {} {} stored {} B",
                s("point_id"),
                s("type"),
                s("vm_name"),
                s("started"),
                p["stored_bytes"]
            )
        }),
        ClientCommand::Call { method, path, body } => {
            let body = body.as_deref().map(serde_json::from_str).transpose().context("the body is not JSON")?;
            let v = s.call(&method.to_uppercase(), path, body)?;
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
    }
    Ok(0)
}
