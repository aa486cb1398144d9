//! `fulcrum`: the command line for a Fulcrum cluster. Talks gRPC to any node.

mod args;
mod drill;
mod output;

use std::time::Duration;

use anyhow::Context;
use anyhow::Result;
use clap::CommandFactory;
use clap::Parser;
use fulcrum_proto::v1 as pb;
use fulcrum_proto::v1::cluster_client::ClusterClient;
use fulcrum_proto::v1::config_client::ConfigClient;
use fulcrum_proto::v1::connections_client::ConnectionsClient;
use tonic::transport::Channel;

use args::ApplyArgs;
use args::Cli;
use args::ClusterCmd;
use args::Cmd;
use args::ConnCmd;
use args::RealCmd;
use args::ServiceCmd;
use args::SyncCmd;
use args::VipCmd;
use args::VipGroupCmd;
use output::Out;

/// Large enough for a whole-config apply/export of 10,000 services.
const MAX_MESSAGE: usize = 256 << 20;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cli = Cli::parse();
    let json = cli.json;
    if let Err(e) = run(cli).await {
        let msg = error_text(&e);
        if json {
            println!("{}", serde_json::json!({ "error": msg }));
        } else {
            eprintln!("error: {msg}");
        }
        std::process::exit(1);
    }
}

/// A gRPC status prints as its message (the server writes messages for people); anything
/// else as the whole chain.
fn error_text(e: &anyhow::Error) -> String {
    for cause in e.chain() {
        if let Some(s) = cause.downcast_ref::<tonic::Status>() {
            let code = match s.code() {
                tonic::Code::InvalidArgument => "invalid",
                tonic::Code::NotFound => "not found",
                tonic::Code::AlreadyExists => "already exists",
                tonic::Code::FailedPrecondition => "refused",
                tonic::Code::Unavailable => "unavailable",
                _ => "",
            };
            let context = e.to_string();
            let head = if context == s.to_string() {
                String::new()
            } else {
                format!("{context}: ")
            };
            return if code.is_empty() {
                format!("{head}{}", s.message())
            } else {
                format!("{head}{code}: {}", s.message())
            };
        }
    }
    format!("{e:#}")
}

pub(crate) struct Conn {
    channel: Channel,
}

impl Conn {
    pub(crate) async fn open(server: &str, timeout: Duration) -> Result<Conn> {
        let url = if server.starts_with("http://") || server.starts_with("https://") {
            server.to_string()
        } else {
            format!("http://{server}")
        };
        let channel = tonic::transport::Endpoint::from_shared(url)
            .with_context(|| format!("bad --server {server:?}"))?
            .connect_timeout(timeout)
            .timeout(timeout)
            .connect()
            .await
            .with_context(|| format!("cannot reach fulcrumd at {server}"))?;
        Ok(Conn { channel })
    }

    pub(crate) fn config(&self) -> ConfigClient<Channel> {
        ConfigClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }

    pub(crate) fn cluster(&self) -> ClusterClient<Channel> {
        ClusterClient::new(self.channel.clone())
    }

    pub(crate) fn connections(&self) -> ConnectionsClient<Channel> {
        ConnectionsClient::new(self.channel.clone()).max_decoding_message_size(MAX_MESSAGE)
    }
}

fn read_opts(stale: bool) -> Option<pb::ReadOptions> {
    Some(pb::ReadOptions { stale })
}

async fn run(cli: Cli) -> Result<()> {
    let out = Out { json: cli.json };
    if let Cmd::Completions { shell } = &cli.cmd {
        clap_complete::generate(
            *shell,
            &mut Cli::command(),
            "fulcrum",
            &mut std::io::stdout(),
        );
        return Ok(());
    }
    if let Cmd::Drill(d) = cli.cmd {
        // A drill talks to several nodes (and `drill serve` to none): it opens its own.
        let code = drill::main(
            &cli.server,
            Duration::from_secs_f64(cli.timeout),
            cli.json,
            d,
        )
        .await?;
        if code != 0 {
            std::process::exit(code);
        }
        return Ok(());
    }
    // Check a declarative file before touching the network: a typo should not need a cluster.
    let apply_input = match &cli.cmd {
        Cmd::Apply(a) => Some(load_cluster_file(a)?),
        _ => None,
    };
    let conn = Conn::open(&cli.server, Duration::from_secs_f64(cli.timeout)).await?;
    match cli.cmd {
        Cmd::Completions { .. } | Cmd::Drill(_) => unreachable!("handled above"),
        Cmd::Cluster { cmd } => cluster(&conn, &out, cmd).await,
        Cmd::Service { cmd } => service(&conn, &out, cmd).await,
        Cmd::Real { cmd } => real(&conn, &out, cmd).await,
        Cmd::VipGroup { cmd } => vip_group(&conn, &out, cmd).await,
        Cmd::Vip {
            cmd: VipCmd::Move { group, to },
        } => {
            let r = conn
                .cluster()
                .move_vip(pb::MoveVipRequest {
                    group: group.clone(),
                    to: to.unwrap_or(0),
                })
                .await
                .context("vip move")?
                .into_inner();
            if out.json {
                out.print_json(&serde_json::json!({ "group": group, "owner": r.owner }));
            } else {
                match r.owner {
                    Some(o) => println!("vip_group {group} is now owned by node {o}"),
                    None => println!("vip_group {group} has no owner now"),
                }
            }
            Ok(())
        }
        Cmd::Events { seconds } => {
            let mut stream = conn
                .cluster()
                .events(pb::EventsRequest {})
                .await
                .context("events")?
                .into_inner();
            let deadline = seconds.map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
            loop {
                let next = match deadline {
                    Some(d) => match tokio::time::timeout_at(d, stream.message()).await {
                        Ok(r) => r,
                        Err(_) => return Ok(()),
                    },
                    None => stream.message().await,
                };
                match next.context("events")? {
                    Some(e) => out.event(&e),
                    None => return Ok(()),
                }
            }
        }
        Cmd::Sync {
            cmd: SyncCmd::Status,
        } => {
            let r = conn
                .connections()
                .sync_status(pb::SyncStatusRequest {})
                .await
                .context("sync status")?
                .into_inner();
            out.sync_status(&r);
            Ok(())
        }
        Cmd::Conn {
            cmd: ConnCmd::List { service, limit },
        } => {
            let r = conn
                .connections()
                .list(pb::ConnListRequest {
                    service: service.unwrap_or_default(),
                    limit,
                })
                .await
                .context("conn list")?
                .into_inner();
            out.connections(&r);
            Ok(())
        }
        Cmd::Apply(a) => {
            let config = apply_input.unwrap_or_default();
            let reply = conn
                .config()
                .apply(pb::ApplyRequest {
                    config: Some(config),
                    dry_run: a.dry_run,
                })
                .await
                .context("apply")?
                .into_inner();
            out.changes(reply.index, &reply.changes, reply.dry_run);
            Ok(())
        }
        Cmd::Export { stale } => {
            let reply = conn
                .config()
                .export(pb::ExportRequest {
                    read: read_opts(stale),
                })
                .await
                .context("export")?
                .into_inner();
            let config = reply.config.unwrap_or_default();
            if out.json {
                out.print_json(&output::config_json(&config));
            } else {
                let model = fulcrum_node::model::ClusterConfig::try_from(&config).map_err(|e| {
                    anyhow::anyhow!("the server sent a config this CLI cannot read: {e}")
                })?;
                print!("{}", fulcrum_node::model::file::to_cluster_toml(&model));
            }
            Ok(())
        }
    }
}

fn load_cluster_file(a: &ApplyArgs) -> Result<pb::ClusterConfig> {
    let text = if a.file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading standard input")?
    } else {
        std::fs::read_to_string(&a.file).with_context(|| format!("reading {}", a.file.display()))?
    };
    let model = fulcrum_node::model::file::parse_cluster_toml(&text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", a.file.display()))?;
    Ok(pb::ClusterConfig::from(&model))
}

async fn cluster(conn: &Conn, out: &Out, cmd: ClusterCmd) -> Result<()> {
    let mut c = conn.cluster();
    match cmd {
        ClusterCmd::Status => {
            let s = c
                .status(pb::StatusRequest { read: None })
                .await
                .context("status")?
                .into_inner();
            out.status(&s);
        }
        ClusterCmd::Members { stale } => {
            let m = c
                .members(pb::MembersRequest {
                    read: read_opts(stale),
                })
                .await
                .context("members")?
                .into_inner();
            out.members(&m);
        }
        ClusterCmd::Join {
            id,
            addr,
            role,
            replace,
        } => {
            let r = c
                .join(pb::JoinRequest {
                    id,
                    addr,
                    role,
                    replace,
                })
                .await
                .context("join")?
                .into_inner();
            out.done(&format!("node {id} joined"), r.index);
        }
        ClusterCmd::Leave { id } => {
            let r = c
                .leave(pb::LeaveRequest { id })
                .await
                .context("leave")?
                .into_inner();
            out.done(&format!("node {id} removed"), r.index);
        }
        ClusterCmd::Transfer { to } => {
            let r = c
                .transfer_leader(pb::TransferRequest {
                    to: to.unwrap_or(0),
                })
                .await
                .context("transfer")?
                .into_inner();
            let leader = r.leader_id.unwrap_or(0);
            if out.json {
                out.print_json(&serde_json::json!({ "leader_id": leader }));
            } else {
                println!("leader is now node {leader}");
            }
        }
    }
    Ok(())
}

async fn service(conn: &Conn, out: &Out, cmd: ServiceCmd) -> Result<()> {
    let mut c = conn.config();
    match cmd {
        ServiceCmd::Add(s) => {
            let svc = s.to_proto()?;
            let r = c
                .add_service(svc)
                .await
                .context("service add")?
                .into_inner();
            out.changes(r.index, &r.changes, false);
        }
        ServiceCmd::Edit(s) => {
            let svc = s.to_proto()?;
            let r = c
                .edit_service(svc)
                .await
                .context("service edit")?
                .into_inner();
            out.changes(r.index, &r.changes, false);
        }
        ServiceCmd::Delete { service } => {
            let key = service.key()?;
            let r = c
                .delete_service(pb::ServiceKeyRequest { key })
                .await
                .context("service delete")?
                .into_inner();
            out.changes(r.index, &r.changes, false);
        }
        ServiceCmd::List { stale } => {
            let r = c
                .list_services(pb::ListServicesRequest {
                    read: read_opts(stale),
                })
                .await
                .context("service list")?
                .into_inner();
            out.services(&r.services);
        }
        ServiceCmd::Stats { service } => {
            let r = conn
                .connections()
                .stats(pb::StatsRequest {
                    service: service.unwrap_or_default(),
                })
                .await
                .context("service stats")?
                .into_inner();
            out.stats(&r);
        }
        ServiceCmd::Show { service, stale } => {
            let key = service.key()?;
            let s = c
                .get_service(pb::GetServiceRequest {
                    key,
                    read: read_opts(stale),
                })
                .await
                .context("service show")?
                .into_inner();
            out.service_detail(&s);
        }
    }
    Ok(())
}

async fn real(conn: &Conn, out: &Out, cmd: RealCmd) -> Result<()> {
    let mut c = conn.config();
    let r = match cmd {
        RealCmd::Add(r) => {
            let req = r.to_proto()?;
            c.add_real(req).await.context("real add")?.into_inner()
        }
        RealCmd::Edit(r) => {
            let req = r.to_proto()?;
            c.edit_real(req).await.context("real edit")?.into_inner()
        }
        RealCmd::Delete { service, real } => {
            let req = pb::RealKeyRequest {
                service: service.key()?,
                address: real,
            };
            c.delete_real(req)
                .await
                .context("real delete")?
                .into_inner()
        }
    };
    out.changes(r.index, &r.changes, false);
    Ok(())
}

async fn vip_group(conn: &Conn, out: &Out, cmd: VipGroupCmd) -> Result<()> {
    let mut c = conn.config();
    match cmd {
        VipGroupCmd::Add {
            name,
            vips,
            interface,
            preferred_owner,
            preempt,
        } => {
            let g = pb::VipGroup {
                name,
                vips,
                interface,
                preferred_owner: preferred_owner.unwrap_or(0),
                preempt,
            };
            let r = c
                .add_vip_group(g)
                .await
                .context("vip-group add")?
                .into_inner();
            out.changes(r.index, &r.changes, false);
        }
        VipGroupCmd::Delete { name } => {
            let r = c
                .delete_vip_group(pb::VipGroupNameRequest { name })
                .await
                .context("vip-group delete")?
                .into_inner();
            out.changes(r.index, &r.changes, false);
        }
        VipGroupCmd::List { stale } => {
            let r = c
                .list_vip_groups(pb::ListVipGroupsRequest {
                    read: read_opts(stale),
                })
                .await
                .context("vip-group list")?
                .into_inner();
            out.vip_groups(&r.vip_groups);
        }
    }
    Ok(())
}
