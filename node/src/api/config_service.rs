//! `fulcrum.v1.Config`: services, real servers, VIP groups, declarative apply/export, watch.

use std::net::SocketAddr;
use std::pin::Pin;

use fulcrum_proto::v1 as pb;
use fulcrum_proto::v1::config_server::Config as ConfigRpc;
use futures::Stream;
use tokio::sync::broadcast::error::RecvError;
use tonic::Request;
use tonic::Response;
use tonic::Status;

use super::status;
use crate::cluster::Cluster;
use crate::cluster::Written;
use crate::model::ClusterConfig;
use crate::model::ModelError;
use crate::model::RealServer;
use crate::model::Service;
use crate::model::ServiceKey;
use crate::model::VipGroup;
use crate::model::parse_socket_addr;
use crate::state::Command;

pub struct ConfigApi {
    cluster: Cluster,
}

impl ConfigApi {
    pub fn new(cluster: Cluster) -> Self {
        ConfigApi { cluster }
    }

    async fn write(&self, cmd: Command) -> Result<Response<pb::WriteReply>, Status> {
        let Written { index, changes } = self.cluster.write(cmd).await.map_err(status)?;
        Ok(Response::new(pb::WriteReply {
            index,
            changes: changes.iter().map(pb::Change::from).collect(),
        }))
    }

    async fn read<T>(
        &self,
        read: Option<pb::ReadOptions>,
        f: impl FnOnce(&ClusterConfig) -> T,
    ) -> Result<(T, u64), Status> {
        let stale = read.map(|r| r.stale).unwrap_or(false);
        self.cluster.read_barrier(stale).await.map_err(status)?;
        Ok(self
            .cluster
            .with_applied(|a| (f(&a.state.config), a.applied_index())))
    }
}

fn invalid(e: ModelError) -> Status {
    Status::invalid_argument(e.to_string())
}

fn key(text: &str) -> Result<ServiceKey, Status> {
    text.parse::<ServiceKey>()
        .map_err(|e: ModelError| Status::invalid_argument(format!("service {text:?}: {e}")))
}

fn real_from(req: &pb::RealRequest) -> Result<(ServiceKey, RealServer), Status> {
    let service = key(&req.service)?;
    let real = req
        .real
        .as_ref()
        .ok_or_else(|| Status::invalid_argument("missing `real`"))?;
    let real = RealServer::try_from(real).map_err(invalid)?;
    Ok((service, real))
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchEvent, Status>> + Send>>;

#[tonic::async_trait]
impl ConfigRpc for ConfigApi {
    async fn list_services(
        &self,
        request: Request<pb::ListServicesRequest>,
    ) -> Result<Response<pb::ListServicesReply>, Status> {
        let (services, index) = self
            .read(request.into_inner().read, |c| {
                c.services
                    .values()
                    .map(pb::Service::from)
                    .collect::<Vec<_>>()
            })
            .await?;
        Ok(Response::new(pb::ListServicesReply { services, index }))
    }

    async fn get_service(
        &self,
        request: Request<pb::GetServiceRequest>,
    ) -> Result<Response<pb::Service>, Status> {
        let req = request.into_inner();
        let k = key(&req.key)?;
        let (found, _) = self
            .read(req.read, |c| c.services.get(&k).map(pb::Service::from))
            .await?;
        found
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("no such service {k}")))
    }

    async fn add_service(
        &self,
        request: Request<pb::Service>,
    ) -> Result<Response<pb::WriteReply>, Status> {
        let service = Service::try_from(&request.into_inner()).map_err(invalid)?;
        self.write(Command::AddService(service)).await
    }

    async fn edit_service(
        &self,
        request: Request<pb::Service>,
    ) -> Result<Response<pb::WriteReply>, Status> {
        let req = request.into_inner();
        let keep_reals = req.reals.is_empty();
        let service = Service::try_from(&req).map_err(invalid)?;
        self.write(Command::EditService {
            service,
            keep_reals,
        })
        .await
    }

    async fn delete_service(
        &self,
        request: Request<pb::ServiceKeyRequest>,
    ) -> Result<Response<pb::WriteReply>, Status> {
        let k = key(&request.into_inner().key)?;
        self.write(Command::DeleteService(k)).await
    }

    async fn add_real(
        &self,
        request: Request<pb::RealRequest>,
    ) -> Result<Response<pb::WriteReply>, Status> {
        let (service, real) = real_from(&request.into_inner())?;
        self.write(Command::AddReal { service, real }).await
    }

    async fn edit_real(
        &self,
        request: Request<pb::RealRequest>,
    ) -> Result<Response<pb::WriteReply>, Status> {
        let (service, real) = real_from(&request.into_inner())?;
        self.write(Command::EditReal { service, real }).await
    }

    async fn delete_real(
        &self,
        request: Request<pb::RealKeyRequest>,
    ) -> Result<Response<pb::WriteReply>, Status> {
        let req = request.into_inner();
        let service = key(&req.service)?;
        let addr: SocketAddr = parse_socket_addr(&req.address)
            .map_err(|e| Status::invalid_argument(format!("real server {:?}: {e}", req.address)))?;
        self.write(Command::DeleteReal { service, addr }).await
    }

    async fn add_vip_group(
        &self,
        request: Request<pb::VipGroup>,
    ) -> Result<Response<pb::WriteReply>, Status> {
        let group = VipGroup::try_from(&request.into_inner()).map_err(invalid)?;
        self.write(Command::AddVipGroup(group)).await
    }

    async fn delete_vip_group(
        &self,
        request: Request<pb::VipGroupNameRequest>,
    ) -> Result<Response<pb::WriteReply>, Status> {
        self.write(Command::DeleteVipGroup(request.into_inner().name))
            .await
    }

    async fn list_vip_groups(
        &self,
        request: Request<pb::ListVipGroupsRequest>,
    ) -> Result<Response<pb::ListVipGroupsReply>, Status> {
        let (vip_groups, index) = self
            .read(request.into_inner().read, |c| {
                c.vip_groups
                    .values()
                    .map(pb::VipGroup::from)
                    .collect::<Vec<_>>()
            })
            .await?;
        Ok(Response::new(pb::ListVipGroupsReply { vip_groups, index }))
    }

    async fn apply(
        &self,
        request: Request<pb::ApplyRequest>,
    ) -> Result<Response<pb::ApplyReply>, Status> {
        let req = request.into_inner();
        let config = ClusterConfig::try_from(&req.config.unwrap_or_default()).map_err(invalid)?;
        if req.dry_run {
            // Against the current state, as the leader sees it; checked exactly as a real apply.
            self.cluster.read_barrier(false).await.map_err(status)?;
            let cmd = Command::Apply(config);
            let (changes, index) = self
                .cluster
                .with_applied(|a| {
                    a.state
                        .preview(&cmd, &a.members())
                        .map(|c| (c, a.applied_index()))
                })
                .map_err(|e| {
                    status(crate::cluster::ClusterError::Rejected {
                        kind: e.kind(),
                        message: e.to_string(),
                    })
                })?;
            return Ok(Response::new(pb::ApplyReply {
                index,
                changes: changes.iter().map(pb::Change::from).collect(),
                dry_run: true,
            }));
        }
        let Written { index, changes } = self
            .cluster
            .write(Command::Apply(config))
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ApplyReply {
            index,
            changes: changes.iter().map(pb::Change::from).collect(),
            dry_run: false,
        }))
    }

    async fn export(
        &self,
        request: Request<pb::ExportRequest>,
    ) -> Result<Response<pb::ExportReply>, Status> {
        let (config, index) = self
            .read(request.into_inner().read, |c| pb::ClusterConfig::from(c))
            .await?;
        Ok(Response::new(pb::ExportReply {
            config: Some(config),
            index,
        }))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        _request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let mut rx = self.cluster.subscribe();
        let stream = async_stream(move |tx| async move {
            loop {
                let item = match rx.recv().await {
                    Ok(ev) => Ok(pb::WatchEvent {
                        index: ev.index,
                        changes: ev.changes.iter().map(pb::Change::from).collect::<Vec<_>>(),
                    }),
                    Err(RecvError::Lagged(n)) => Err(Status::data_loss(format!(
                        "watcher fell {n} events behind; export the config and watch again"
                    ))),
                    Err(RecvError::Closed) => return,
                };
                let stop = item.is_err();
                if tx.send(item).await.is_err() || stop {
                    return;
                }
            }
        });
        Ok(Response::new(stream))
    }
}

/// A stream fed by a task through a small channel; the task ends when the client goes away.
fn async_stream<F, Fut>(f: F) -> WatchStream
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<pb::WatchEvent, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(f(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}
