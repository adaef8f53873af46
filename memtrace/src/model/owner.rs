//! Who a cgroup belongs to: a Kubernetes pod and container, or a systemd unit (`enrich::owner`
//! reads it from the cgroup's path).

use serde::Serialize;

/// The owner of a cgroup, where its path tells.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Owner {
    /// The container's id, as its runtime gives it (64 hex digits).
    pub container_id: Option<String>,
    /// `containerd`, `cri-o`, `docker` or `podman`, where the path says.
    pub runtime: Option<&'static str>,
    /// The Kubernetes pod's UID (as `kube_pod_info{uid}` has it).
    pub pod_uid: Option<String>,
    /// The pod's QoS class: `guaranteed`, `burstable` or `besteffort`.
    pub qos_class: Option<&'static str>,
    /// The systemd unit (`nginx.service`, `session-3.scope`), outside containers.
    pub systemd_unit: Option<String>,
    /// The slice the unit (or cgroup) is in (`system.slice`, `user-1000.slice`).
    pub systemd_slice: Option<String>,
}

impl Owner {
    /// The container as kube-state-metrics names it (`containerd://ID`), to join with
    /// `kube_pod_container_info{container_id}`; the bare id where the runtime is unknown.
    pub fn container_label(&self) -> Option<String> {
        let id = self.container_id.as_deref()?;
        Some(match self.runtime {
            Some(runtime) => format!("{runtime}://{id}"),
            None => id.to_owned(),
        })
    }
}
