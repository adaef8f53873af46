//! Who a cgroup belongs to, read from its path alone: the Kubernetes pod (its UID and QoS class)
//! and the container (its id and runtime) that kubelet and the container runtimes name their
//! cgroups after, with either cgroup driver (cgroupfs, systemd); else the systemd unit and slice.
//! The same paths on cgroup v1 (the memory hierarchy) and v2. Pure: no I/O.

use crate::model::owner::Owner;

/// Reads a cgroup path (`/kubepods.slice/.../cri-containerd-ID.scope`).
pub fn owner_of(path: &str) -> Owner {
    let parts: Vec<&str> = path.split('/').filter(|part| !part.is_empty()).collect();
    let mut owner = Owner::default();
    for (i, &part) in parts.iter().enumerate() {
        let parent = i.checked_sub(1).map(|i| parts[i]);
        if let Some(uid) = pod_uid(part) {
            owner.pod_uid = Some(uid);
            owner.qos_class = Some(qos_class(part, parent));
        } else if let Some((runtime, id)) = container(part, parent, owner.pod_uid.is_some()) {
            owner.runtime = runtime;
            owner.container_id = Some(id.to_owned());
            // What a container makes of its own cgroups says nothing more of its owner.
            break;
        }
    }
    if owner.pod_uid.is_none() && owner.container_id.is_none() {
        let (unit, slice) = systemd(&parts);
        owner.systemd_unit = unit;
        owner.systemd_slice = slice;
    }
    owner
}

/// `pod<uid>` (cgroupfs) or `kubepods[-qos]-pod<uid with _ for ->.slice` (systemd).
fn pod_uid(part: &str) -> Option<String> {
    let uid = if let Some(slice) = part.strip_suffix(".slice") {
        if !slice.starts_with("kubepods") {
            return None;
        }
        slice.rsplit_once("-pod")?.1.replace('_', "-")
    } else {
        part.strip_prefix("pod")?.to_owned()
    };
    is_uid(&uid).then_some(uid)
}

/// A UUID as Kubernetes writes pod UIDs: 8-4-4-4-12 hex digits.
fn is_uid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(group, len)| group.len() == len && is_hex(group))
}

fn is_hex(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The QoS class of a pod cgroup: named in the systemd slice, or by the directory above.
fn qos_class(pod: &str, parent: Option<&str>) -> &'static str {
    let level = if pod.ends_with(".slice") {
        pod
    } else {
        parent.unwrap_or("")
    };
    if level.contains("besteffort") {
        "besteffort"
    } else if level.contains("burstable") {
        "burstable"
    } else {
        "guaranteed"
    }
}

/// A container's cgroup: `<prefix>-<id>.scope` (systemd driver), `<prefix>-<id>` or a bare id
/// under a pod or `docker` (cgroupfs driver). Monitors (`crio-conmon-`, `libpod-conmon-`) are
/// not containers.
fn container<'a>(
    part: &'a str,
    parent: Option<&str>,
    in_pod: bool,
) -> Option<(Option<&'static str>, &'a str)> {
    const PREFIXES: [(&str, &str); 4] = [
        ("cri-containerd-", "containerd"),
        ("crio-", "cri-o"),
        ("docker-", "docker"),
        ("libpod-", "podman"),
    ];
    let name = part.strip_suffix(".scope").unwrap_or(part);
    for (prefix, runtime) in PREFIXES {
        if let Some(id) = name.strip_prefix(prefix)
            && is_container_id(id)
        {
            return Some((Some(runtime), id));
        }
    }
    if is_container_id(part) {
        return match parent {
            Some("docker") => Some((Some("docker"), part)),
            _ if in_pod => Some((None, part)),
            _ => None,
        };
    }
    None
}

/// Container ids are 64 hex digits; shortened ones, 12 or more.
fn is_container_id(text: &str) -> bool {
    text.len() >= 12 && text.len() <= 64 && is_hex(text)
}

/// The last unit (`.service`, `.scope`) of a path, and the last slice above it (or the last
/// slice, with no unit).
fn systemd(parts: &[&str]) -> (Option<String>, Option<String>) {
    let unit = parts
        .iter()
        .rposition(|part| part.ends_with(".service") || part.ends_with(".scope"));
    let above = unit.unwrap_or(parts.len());
    let slice = parts[..above]
        .iter()
        .rev()
        .find(|part| part.ends_with(".slice"))
        .map(|&slice| slice.to_owned());
    (unit.map(|i| parts[i].to_owned()), slice)
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "7f1c7f1e-52b1-4c4e-9a3c-0f9f0e7b8c9d";
    const UID_SYSTEMD: &str = "7f1c7f1e_52b1_4c4e_9a3c_0f9f0e7b8c9d";
    const ID: &str = "4d7a9b1c2e3f40516273849a0b1c2d3e4f5061728394a5b6c7d8e9f00112233";

    fn pod(qos: &'static str, runtime: Option<&'static str>) -> Owner {
        Owner {
            container_id: Some(ID.into()),
            runtime,
            pod_uid: Some(UID.into()),
            qos_class: Some(qos),
            systemd_unit: None,
            systemd_slice: None,
        }
    }

    #[test]
    fn kubernetes_with_the_cgroupfs_driver() {
        // containerd or Docker under kubelet's cgroupfs driver: the runtime is not in the path.
        assert_eq!(
            owner_of(&format!("/kubepods/burstable/pod{UID}/{ID}")),
            pod("burstable", None)
        );
        assert_eq!(
            owner_of(&format!("/kubepods/besteffort/pod{UID}/{ID}")),
            pod("besteffort", None)
        );
        assert_eq!(
            owner_of(&format!("/kubepods/pod{UID}/{ID}")),
            pod("guaranteed", None)
        );
        // CRI-O names its container cgroups even under cgroupfs.
        assert_eq!(
            owner_of(&format!("/kubepods/burstable/pod{UID}/crio-{ID}")),
            pod("burstable", Some("cri-o"))
        );
        // The pod's own cgroup, above its containers.
        let pod_only = owner_of(&format!("/kubepods/burstable/pod{UID}"));
        assert_eq!(pod_only.pod_uid.as_deref(), Some(UID));
        assert_eq!(pod_only.container_id, None);
    }

    #[test]
    fn kubernetes_with_the_systemd_driver() {
        assert_eq!(
            owner_of(&format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_SYSTEMD}.slice/cri-containerd-{ID}.scope"
            )),
            pod("burstable", Some("containerd"))
        );
        assert_eq!(
            owner_of(&format!(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_SYSTEMD}.slice/crio-{ID}.scope"
            )),
            pod("besteffort", Some("cri-o"))
        );
        assert_eq!(
            owner_of(&format!(
                "/kubepods.slice/kubepods-pod{UID_SYSTEMD}.slice/docker-{ID}.scope"
            )),
            pod("guaranteed", Some("docker"))
        );
        // A container running systemd has cgroups of its own below its scope.
        assert_eq!(
            owner_of(&format!(
                "/kubepods.slice/kubepods-pod{UID_SYSTEMD}.slice/cri-containerd-{ID}.scope/init.scope"
            )),
            pod("guaranteed", Some("containerd"))
        );
        // CRI-O's monitor is no container.
        let conmon = owner_of(&format!(
            "/kubepods.slice/kubepods-pod{UID_SYSTEMD}.slice/crio-conmon-{ID}.scope"
        ));
        assert_eq!(
            (conmon.pod_uid.as_deref(), conmon.container_id),
            (Some(UID), None)
        );
    }

    #[test]
    fn containers_without_kubernetes() {
        let docker = |path: &str| owner_of(path);
        for path in [
            format!("/docker/{ID}"),
            format!("/system.slice/docker-{ID}.scope"),
        ] {
            let owner = docker(&path);
            assert_eq!(owner.container_id.as_deref(), Some(ID), "{path}");
            assert_eq!(owner.runtime, Some("docker"), "{path}");
            assert_eq!((owner.pod_uid, owner.systemd_unit), (None, None), "{path}");
        }
        for path in [
            format!("/machine.slice/libpod-{ID}.scope"),
            format!("/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope"),
            format!("/libpod_parent/libpod-{ID}"),
        ] {
            let owner = owner_of(&path);
            assert_eq!(owner.runtime, Some("podman"), "{path}");
            assert_eq!(owner.container_id.as_deref(), Some(ID), "{path}");
        }
        assert_eq!(
            owner_of(&format!("/docker/{ID}")).container_label(),
            Some(format!("docker://{ID}"))
        );
    }

    #[test]
    fn systemd_units_and_slices_on_hosts_without_containers() {
        let owner = owner_of("/system.slice/nginx.service");
        assert_eq!(owner.systemd_unit.as_deref(), Some("nginx.service"));
        assert_eq!(owner.systemd_slice.as_deref(), Some("system.slice"));
        let owner = owner_of("/user.slice/user-1000.slice/session-3.scope");
        assert_eq!(owner.systemd_unit.as_deref(), Some("session-3.scope"));
        assert_eq!(owner.systemd_slice.as_deref(), Some("user-1000.slice"));
        let owner = owner_of(
            "/user.slice/user-1000.slice/user@1000.service/app.slice/app-firefox-42.scope",
        );
        assert_eq!(owner.systemd_unit.as_deref(), Some("app-firefox-42.scope"));
        assert_eq!(owner.systemd_slice.as_deref(), Some("app.slice"));
        let owner = owner_of("/system.slice");
        assert_eq!(
            (owner.systemd_unit, owner.systemd_slice.as_deref()),
            (None, Some("system.slice"))
        );
        assert_eq!(owner_of("/"), Owner::default());
        assert_eq!(owner_of("/memtrace-test-serve-42"), Owner::default());
    }

    #[test]
    fn look_alikes_are_not_taken() {
        // Not a UID, not hex, too short.
        assert_eq!(owner_of("/kubepods/burstable/podcast"), Owner::default());
        assert_eq!(owner_of("/docker/not-a-container").container_id, None);
        assert_eq!(
            owner_of("/system.slice/docker-abc.scope").container_id,
            None
        );
        assert_eq!(
            owner_of("/system.slice/docker-abc.scope")
                .systemd_unit
                .as_deref(),
            Some("docker-abc.scope")
        );
    }
}
