//! Whether the OS user PostgreSQL runs as can reach a directory, and a
//! directory both this process and PostgreSQL can use.
//!
//! As root, PostgreSQL programs run as `postgres`, which must be able to
//! enter every directory above a data directory. A 0700 home of root is
//! the usual obstacle, and initdb reports it late and obscurely ("could
//! not open file ... for reading: Permission denied"), so callers check
//! first with [`check_reachable`].
//!
//! The check reads the owner, group and mode bits of each directory.
//! Those decide alone: PostgreSQL runs with the `postgres` user's id and
//! primary group and no supplementary groups (std's `Command` drops them
//! when root changes the uid). A directory that carries a POSIX ACL is
//! left for the kernel to judge, since an ACL may grant what the bits
//! do not (`setfacl -m u:postgres:x /root` is a common fix).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{chown, MetadataExt, PermissionsExt};
use std::path::Path;

use super::{io_err, passwd_name, run_as, LocalPgError, Result, RunAs};

/// Whether this process is root, so PostgreSQL programs run as the
/// `postgres` user.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Checks that the PostgreSQL user can enter `path` and every directory
/// above it, as far as they exist (missing ones are for the caller to
/// create enterable). Always passes when not root: PostgreSQL then runs as
/// this very user.
pub fn check_reachable(path: &Path) -> Result<()> {
    match run_as()? {
        Some(who) => check_reachable_as(path, path, who),
        None => Ok(()),
    }
}

/// Makes `dir`, a directory holding this process's own files and
/// PostgreSQL data directories below it, after checking the PostgreSQL
/// user can reach it. Missing parents are created 0755. As root, `dir`
/// becomes `root:postgres` mode 0710: PostgreSQL may pass through to its
/// clusters, nobody else may enter (the files may hold passwords and
/// tokens). Otherwise it becomes 0700.
pub fn make_shared_dir(dir: &Path) -> Result<()> {
    let dir = std::path::absolute(dir).map_err(io_err(format!("resolve {}", dir.display())))?;
    let who = run_as()?;
    if let (Some(who), Some(parent)) = (who, dir.parent()) {
        check_reachable_as(parent, &dir, who)?;
    }
    let missing: Vec<&Path> = dir.ancestors().take_while(|p| !p.exists()).collect();
    for d in missing.iter().rev() {
        std::fs::create_dir(d).map_err(io_err(format!("create {}", d.display())))?;
        let mode = if *d == dir { 0o700 } else { 0o755 };
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode))
            .map_err(io_err(format!("chmod {}", d.display())))?;
    }
    let mode = match who {
        Some(who) => {
            chown(&dir, Some(0), Some(who.gid))
                .map_err(io_err(format!("chown {}", dir.display())))?;
            0o710
        }
        None => 0o700,
    };
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode))
        .map_err(io_err(format!("chmod {}", dir.display())))
}

/// [`check_reachable`] for the given identity; errors name `target` as
/// what PostgreSQL needs to reach.
fn check_reachable_as(path: &Path, target: &Path, who: RunAs) -> Result<()> {
    let what = || format!("resolve {}", path.display());
    let abs = std::path::absolute(path).map_err(io_err(what()))?;
    let Some(existing) = abs.ancestors().find(|p| p.exists()) else {
        return Ok(());
    };
    // Through symlinks: what matters is the directories PostgreSQL's path
    // lookups really pass.
    let real = existing.canonicalize().map_err(io_err(what()))?;
    // From the root down, so the error names the first directory in the way.
    let mut dirs: Vec<&Path> = real.ancestors().collect();
    dirs.reverse();
    for dir in dirs {
        let meta = std::fs::metadata(dir).map_err(io_err(format!("stat {}", dir.display())))?;
        if !meta.is_dir() || may_enter(meta.mode(), meta.uid(), meta.gid(), who) || has_acl(dir) {
            continue;
        }
        return Err(LocalPgError::Unreachable {
            dir: dir.to_path_buf(),
            mode: meta.mode() & 0o7777,
            owner: passwd_name(meta.uid()).unwrap_or_else(|| format!("uid {}", meta.uid())),
            target: target.to_path_buf(),
        });
    }
    Ok(())
}

/// Whether `who` may enter (search) a directory with this mode and owner,
/// by the owner, group and other bits as the kernel applies them: the
/// first class that matches decides, even when it grants less than a
/// later one would.
fn may_enter(mode: u32, uid: u32, gid: u32, who: RunAs) -> bool {
    let bit = if who.uid == uid {
        0o100
    } else if who.gid == gid {
        0o010
    } else {
        0o001
    };
    mode & bit != 0
}

/// Whether `dir` carries a POSIX access ACL.
fn has_acl(dir: &Path) -> bool {
    let Ok(path) = CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: both strings are NUL-terminated and outlive the call; a null
    // buffer of size 0 asks only for the attribute's size.
    let size = unsafe {
        libc::getxattr(
            path.as_ptr(),
            c"system.posix_acl_access".as_ptr(),
            std::ptr::null_mut(),
            0,
        )
    };
    size > 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const PG: RunAs = RunAs {
        uid: 4242,
        gid: 4343,
    };

    #[test]
    fn mode_bits_decide_by_owner_then_group_then_other() {
        // Owner: only the user bits count.
        assert!(may_enter(0o700, 4242, 0, PG));
        assert!(!may_enter(0o077, 4242, 4343, PG));
        // Group (the primary one): only the group bits count.
        assert!(may_enter(0o710, 0, 4343, PG));
        assert!(!may_enter(0o701, 0, 4343, PG));
        // Anyone else: the other bits.
        assert!(may_enter(0o711, 0, 0, PG));
        assert!(may_enter(0o755, 0, 0, PG));
        assert!(!may_enter(0o700, 0, 0, PG));
        assert!(!may_enter(0o770, 0, 0, PG));
        // Read without search is not enough to pass through.
        assert!(!may_enter(0o744, 0, 0, PG));
    }

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    /// Real directories, judged for a user that owns none of them (as
    /// `postgres` owns nothing under a temp dir of root).
    #[test]
    fn names_the_first_directory_in_the_way() {
        let tmp = tempfile::tempdir().unwrap();
        let outer = tmp.path().join("home");
        let inner = outer.join("inner");
        std::fs::create_dir_all(&inner).unwrap();
        chmod(tmp.path(), 0o755);
        chmod(&outer, 0o700);
        chmod(&inner, 0o700);
        let target = inner.join("data/dev");
        match check_reachable_as(&target, &target, PG) {
            Err(LocalPgError::Unreachable {
                dir,
                mode,
                target: t,
                ..
            }) => {
                assert_eq!(dir, outer.canonicalize().unwrap());
                assert_eq!(mode, 0o700);
                assert_eq!(t, target);
            }
            other => panic!("expected Unreachable, got {other:?}"),
        }
        // Once the outer one lets others through, the inner one is next.
        chmod(&outer, 0o711);
        match check_reachable_as(&target, &target, PG) {
            Err(LocalPgError::Unreachable { dir, .. }) => {
                assert_eq!(dir, inner.canonicalize().unwrap())
            }
            other => panic!("expected Unreachable, got {other:?}"),
        }
        chmod(&inner, 0o755);
        check_reachable_as(&target, &target, PG).unwrap();
        // The message says who, where and how.
        chmod(&outer, 0o700);
        let msg = check_reachable_as(&target, &target, PG)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("`postgres`"), "{msg}");
        assert!(msg.contains(&outer.display().to_string()), "{msg}");
        assert!(msg.contains("mode 0700"), "{msg}");
        chmod(&outer, 0o755);
    }

    fn mode_of(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().mode() & 0o7777
    }

    #[test]
    fn shared_dir_is_for_this_user_and_postgres_only() {
        let tmp = tempfile::tempdir().unwrap();
        chmod(tmp.path(), 0o755);
        let dir = tmp.path().join("a/b/dev");
        make_shared_dir(&dir).unwrap();
        assert_eq!(mode_of(&tmp.path().join("a")), 0o755);
        assert_eq!(mode_of(&tmp.path().join("a/b")), 0o755);
        match run_as().unwrap() {
            Some(pg) => {
                let meta = std::fs::metadata(&dir).unwrap();
                assert_eq!((meta.uid(), meta.gid()), (0, pg.gid));
                assert_eq!(mode_of(&dir), 0o710);
            }
            None => assert_eq!(mode_of(&dir), 0o700),
        }
        // Again on the existing dir: same result, no error.
        make_shared_dir(&dir).unwrap();
        // Under a directory `postgres` cannot enter (only root has one it
        // does not own), nothing is created.
        if is_root() {
            let closed = tmp.path().join("closed");
            std::fs::create_dir(&closed).unwrap();
            chmod(&closed, 0o700);
            let target = closed.join("x/dev");
            match make_shared_dir(&target) {
                Err(LocalPgError::Unreachable { dir, target: t, .. }) => {
                    assert_eq!((dir, t), (closed.canonicalize().unwrap(), target));
                }
                other => panic!("expected Unreachable, got {other:?}"),
            }
            assert!(!closed.join("x").exists());
        }
    }

    #[test]
    fn symlinks_are_followed_to_the_real_directories() {
        let tmp = tempfile::tempdir().unwrap();
        chmod(tmp.path(), 0o755);
        let hidden = tmp.path().join("hidden");
        let data = hidden.join("data");
        std::fs::create_dir_all(&data).unwrap();
        chmod(&hidden, 0o700);
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&data, &link).unwrap();
        match check_reachable_as(&link.join("dev"), &link.join("dev"), PG) {
            Err(LocalPgError::Unreachable { dir, .. }) => {
                assert_eq!(dir, hidden.canonicalize().unwrap())
            }
            other => panic!("expected Unreachable, got {other:?}"),
        }
        chmod(&hidden, 0o755);
        check_reachable_as(&link.join("dev"), &link.join("dev"), PG).unwrap();
    }
}
