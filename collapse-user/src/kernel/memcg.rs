//! A process's memory cgroup and its anonymous and THP bytes from `memory.stat`
//! (Documentation/admin-guide/cgroup-v2.rst "memory.stat": `anon`, `anon_thp`;
//! Documentation/admin-guide/cgroup-v1/memory.rst 5.2: `total_rss`, `total_rss_huge`).
//!
//! cgroup v2 is the feature ([`Feature::CgroupV2Memory`]): the process's group from the `0::`
//! line of /proc/PID/cgroup, its `memory.stat` under the v2 mount. Its fallback, for hybrid
//! hosts whose memory controller is still bound to v1 (this VM, older container hosts), is the
//! v1 memory controller's group (`N:memory:/path` in /proc/PID/cgroup) and its hierarchical
//! `total_rss` / `total_rss_huge`, which count the same anonymous pages.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use super::features::Feature;

/// Where the v2 hierarchy may be mounted (unified, then hybrid), and the v1 memory controller.
const V2_ROOTS: [&str; 2] = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"];
const V1_MEMORY_ROOT: &str = "/sys/fs/cgroup/memory";

#[derive(Debug, thiserror::Error)]
pub enum MemcgError {
    #[error("reading {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("pid {pid} is in no memory cgroup (no v2 group with memory.stat, no v1 memory line)")]
    NoGroup { pid: i32 },
    #[error("{}: no {key} line", path.display())]
    Missing { path: PathBuf, key: &'static str },
}

type Result<T> = std::result::Result<T, MemcgError>;

/// Which hierarchy the numbers come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Hierarchy {
    V2,
    V1,
}

/// A memory cgroup: its path as /proc/PID/cgroup names it (`/kubepods.slice/...`), and where
/// its `memory.stat` is.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MemoryCgroup {
    pub path: String,
    pub hierarchy: Hierarchy,
    dir: PathBuf,
}

/// Anonymous memory of a cgroup and how much of it THPs map.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupMemory {
    pub anon_bytes: u64,
    pub anon_thp_bytes: u64,
}

/// The memory cgroup of `pid`: its v2 group when that has `memory.stat`, else (or with
/// `COLLAPSE_FALLBACKS=cgroup_v2_memory`) its v1 memory controller group.
pub fn of_process(pid: i32) -> Result<MemoryCgroup> {
    let path = PathBuf::from(format!("/proc/{pid}/cgroup"));
    let text = fs::read_to_string(&path).map_err(|source| MemcgError::Read { path, source })?;
    let v2 = !Feature::CgroupV2Memory.forced_off();
    let roots: Vec<&Path> = V2_ROOTS.iter().map(Path::new).collect();
    group_of(&text, v2, &roots, Path::new(V1_MEMORY_ROOT)).ok_or(MemcgError::NoGroup { pid })
}

/// Whether this process's own cgroup v2 group has `memory.stat` (the memory controller is on
/// v2 here), for `collapse status`.
pub fn probe_v2() -> std::result::Result<(), String> {
    let text =
        fs::read_to_string("/proc/self/cgroup").map_err(|e| format!("/proc/self/cgroup: {e}"))?;
    let roots: Vec<&Path> = V2_ROOTS.iter().map(Path::new).collect();
    match group_of(&text, true, &roots, Path::new(V1_MEMORY_ROOT)) {
        Some(g) if g.hierarchy == Hierarchy::V2 => Ok(()),
        _ => Err(
            "the memory controller is not on cgroup v2 here (no memory.stat in our v2 group)"
                .into(),
        ),
    }
}

/// The group in a /proc/PID/cgroup text: the v2 one (`0::/path`) whose directory under one of
/// `v2_roots` has `memory.stat` (when `v2`), else the v1 `memory` controller's under `v1_root`.
fn group_of(text: &str, v2: bool, v2_roots: &[&Path], v1_root: &Path) -> Option<MemoryCgroup> {
    let lines = text.lines().filter_map(|l| {
        let mut parts = l.splitn(3, ':');
        Some((parts.next()?, parts.next()?, parts.next()?))
    });
    let rel = |p: &str| p.trim_start_matches('/').to_owned();
    let mut v1 = None;
    for (id, controllers, path) in lines {
        if v2 && id == "0" && controllers.is_empty() {
            for root in v2_roots {
                let dir = root.join(rel(path));
                if dir.join("memory.stat").is_file() {
                    return Some(MemoryCgroup {
                        path: path.to_owned(),
                        hierarchy: Hierarchy::V2,
                        dir,
                    });
                }
            }
        }
        if controllers.split(',').any(|c| c == "memory") {
            v1 = Some(MemoryCgroup {
                path: path.to_owned(),
                hierarchy: Hierarchy::V1,
                dir: v1_root.join(rel(path)),
            });
        }
    }
    v1
}

impl MemoryCgroup {
    /// Its anonymous and anonymous-THP bytes now.
    pub fn memory(&self) -> Result<CgroupMemory> {
        let path = self.dir.join("memory.stat");
        let text = fs::read_to_string(&path).map_err(|source| MemcgError::Read {
            path: path.clone(),
            source,
        })?;
        let (anon, thp) = match self.hierarchy {
            Hierarchy::V2 => ("anon", "anon_thp"),
            // Hierarchical: a pod's group holds its containers' pages in child groups.
            Hierarchy::V1 => ("total_rss", "total_rss_huge"),
        };
        let get = |key: &'static str| {
            stat_value(&text, key).ok_or_else(|| MemcgError::Missing {
                path: path.clone(),
                key,
            })
        };
        Ok(CgroupMemory {
            anon_bytes: get(anon)?,
            anon_thp_bytes: get(thp)?,
        })
    }
}

fn stat_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_v2_group_with_memory_stat_else_the_v1_memory_group() {
        let dir = std::env::temp_dir().join(format!("collapse-memcg-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let v2 = dir.join("v2");
        let v1 = dir.join("v1");
        fs::create_dir_all(v2.join("kubepods.slice/pod1")).unwrap();
        fs::write(
            v2.join("kubepods.slice/pod1/memory.stat"),
            "anon 8388608\nfile 0\nanon_thp 4194304\n",
        )
        .unwrap();
        fs::create_dir_all(v1.join("job/a")).unwrap();
        fs::write(
            v1.join("job/a/memory.stat"),
            "rss 1\nrss_huge 0\ntotal_rss 12288\ntotal_rss_huge 0\n",
        )
        .unwrap();
        let roots = [v2.as_path()];
        let unified = "0::/kubepods.slice/pod1\n";
        let g = group_of(unified, true, &roots, &v1).unwrap();
        assert_eq!(
            (g.path.as_str(), g.hierarchy),
            ("/kubepods.slice/pod1", Hierarchy::V2)
        );
        assert_eq!(
            g.memory().unwrap(),
            CgroupMemory {
                anon_bytes: 8 << 20,
                anon_thp_bytes: 4 << 20
            }
        );
        let hybrid = "4:memory:/job/a\n1:cpu:/\n0::/\n";
        // The v2 root group has no memory.stat here: the v1 memory group it is.
        let g = group_of(hybrid, true, &roots, &v1).unwrap();
        assert_eq!((g.path.as_str(), g.hierarchy), ("/job/a", Hierarchy::V1));
        assert_eq!(g.memory().unwrap().anon_bytes, 12288);
        // Forced fallback: v1 even where v2 has the numbers.
        let both = "4:memory:/job/a\n0::/kubepods.slice/pod1\n";
        assert_eq!(
            group_of(both, false, &roots, &v1).unwrap().hierarchy,
            Hierarchy::V1
        );
        assert_eq!(
            group_of(both, true, &roots, &v1).unwrap().hierarchy,
            Hierarchy::V2
        );
        assert!(group_of("1:cpu:/\n", true, &roots, &v1).is_none());
        let _ = fs::remove_dir_all(&dir);
    }
}
