//! Container names, where the runtime keeps them in a file we can read:
//! docker (`containers/<id>/config.v2.json` under its data root,
//! `/var/lib/docker` or daemon.json's `data-root`) and
//! podman run by root (`overlay-containers/containers.json`). A bonus: a
//! container whose name cannot be read is still named by its id.

use std::path::PathBuf;
use std::sync::Mutex;

use foldhash::HashMap;

use super::Runtime;

/// Ids looked up, named or not; cleared whole when full, since containers
/// come and go on a long-running host.
const CACHED: usize = 4096;

#[derive(Debug)]
pub(crate) struct ContainerNames {
    docker: PathBuf,
    podman: PathBuf,
    /// id -> name (None: looked up, unnamed), so each id is read once.
    cache: Mutex<HashMap<Box<str>, Option<Box<str>>>>,
}

impl Default for ContainerNames {
    fn default() -> Self {
        Self::new(docker_root(std::path::Path::new("/etc/docker/daemon.json")), "/var/lib/containers/storage")
    }
}

/// Docker's data root: `data-root` in its daemon.json when set there.
fn docker_root(daemon_json: &std::path::Path) -> PathBuf {
    #[derive(serde::Deserialize)]
    struct Daemon {
        #[serde(rename = "data-root")]
        data_root: Option<PathBuf>,
    }
    std::fs::read(daemon_json)
        .ok()
        .and_then(|b| serde_json::from_slice::<Daemon>(&b).ok())
        .and_then(|d| d.data_root)
        .unwrap_or_else(|| PathBuf::from("/var/lib/docker"))
}

impl ContainerNames {
    pub(crate) fn new(docker: impl Into<PathBuf>, podman: impl Into<PathBuf>) -> Self {
        Self { docker: docker.into(), podman: podman.into(), cache: Mutex::default() }
    }

    pub(crate) fn name(&self, runtime: Runtime, id: &str) -> Option<Box<str>> {
        // A path component made of what a cgroup name said: only ids.
        if !matches!(runtime, Runtime::Docker | Runtime::Podman) || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let mut cache = self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(known) = cache.get(id) {
            return known.clone();
        }
        if cache.len() >= CACHED {
            cache.clear();
        }
        let name = match runtime {
            Runtime::Docker => self.docker_name(id),
            _ => {
                // One file names every podman container: take them all.
                for (other, name) in self.podman_names() {
                    cache.insert(other, Some(name));
                }
                cache.get(id).cloned().flatten()
            }
        };
        cache.insert(id.into(), name.clone());
        name
    }

    fn docker_name(&self, id: &str) -> Option<Box<str>> {
        #[derive(serde::Deserialize)]
        struct Config {
            #[serde(rename = "Name")]
            name: String,
        }
        let path = self.docker.join("containers").join(id).join("config.v2.json");
        let config: Config = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
        let name = config.name.strip_prefix('/').unwrap_or(&config.name);
        (!name.is_empty()).then(|| name.into())
    }

    fn podman_names(&self) -> Vec<(Box<str>, Box<str>)> {
        #[derive(serde::Deserialize)]
        struct Entry {
            id: String,
            #[serde(default)]
            names: Vec<String>,
        }
        let path = self.podman.join("overlay-containers").join("containers.json");
        let Some(entries) = std::fs::read(path).ok().and_then(|b| serde_json::from_slice::<Vec<Entry>>(&b).ok()) else {
            return Vec::new();
        };
        entries
            .into_iter()
            .filter_map(|e| Some((e.id.into_boxed_str(), e.names.into_iter().next()?.into_boxed_str())))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(PathBuf);

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A docker data root with one container and a podman store with two,
    /// laid out as those runtimes write them.
    fn state(tag: &str) -> (Dir, ContainerNames) {
        let dir = Dir(std::env::temp_dir().join(format!("unixtrace-names-{}-{tag}", std::process::id())));
        let docker = dir.0.join("docker");
        let id = "ab".repeat(32);
        std::fs::create_dir_all(docker.join("containers").join(&id)).expect("mkdir");
        std::fs::write(
            docker.join("containers").join(&id).join("config.v2.json"),
            r#"{"ID":"abab","Name":"/web\u001b[2J","State":{"Running":true}}"#,
        )
        .expect("config");
        let podman = dir.0.join("podman");
        std::fs::create_dir_all(podman.join("overlay-containers")).expect("mkdir");
        std::fs::write(
            podman.join("overlay-containers/containers.json"),
            r#"[{"id":"cdcd","names":["db"],"image":"x"},{"id":"efef","names":[]}]"#,
        )
        .expect("containers.json");
        let names = ContainerNames::new(docker, podman);
        (dir, names)
    }

    #[test]
    fn docker_and_podman_names_are_read_from_their_state() {
        let (_dir, names) = state("read");
        assert_eq!(names.name(Runtime::Docker, &"ab".repeat(32)).as_deref(), Some("web\u{1b}[2J"), "exact value");
        assert_eq!(names.name(Runtime::Podman, "cdcd").as_deref(), Some("db"));
        assert_eq!(names.name(Runtime::Podman, "efef"), None, "a container without a name");
        assert_eq!(names.name(Runtime::Docker, &"cd".repeat(32)), None, "a container docker does not know");
        assert_eq!(names.name(Runtime::Containerd, "cdcd"), None, "no state file is read for others");
    }

    #[test]
    fn dockers_data_root_is_taken_from_its_daemon_json() {
        let (dir, _) = state("root");
        let json = dir.0.join("daemon.json");
        assert_eq!(docker_root(&json), PathBuf::from("/var/lib/docker"), "no daemon.json");
        std::fs::write(&json, r#"{"data-root": "/srv/docker", "log-driver": "journald"}"#).expect("daemon.json");
        assert_eq!(docker_root(&json), PathBuf::from("/srv/docker"));
        std::fs::write(&json, r#"{"log-driver": "journald"}"#).expect("daemon.json");
        assert_eq!(docker_root(&json), PathBuf::from("/var/lib/docker"), "not set there");
    }

    #[test]
    fn an_id_is_read_once_and_never_used_as_a_path_unless_hex() {
        let (dir, names) = state("once");
        let id = "ab".repeat(32);
        assert!(names.name(Runtime::Docker, &id).is_some());
        std::fs::remove_dir_all(dir.0.join("docker")).expect("rm");
        assert!(names.name(Runtime::Docker, &id).is_some(), "cached");
        assert_eq!(names.name(Runtime::Docker, "../../etc"), None);
    }
}
