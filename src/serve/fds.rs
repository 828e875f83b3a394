//! The descriptor budget: every door shares one file table, so at start the soft
//! `RLIMIT_NOFILE` is raised to the hard limit and the connection caps are sized from
//! it, so that the HTTP doors (reachable by anyone who reaches Caddy) can never take the
//! descriptors that the socket door (the Caddy module's lookups) needs.
//!
//! The limit is split in three: [`RESERVED`] descriptors for everything else (database,
//! logs, LAPI and hub connections, the engine's pipes, the runtime), then half of the
//! rest at most for the socket door, then what is left for forward_auth and the admin
//! API (the admin API gets an eighth of it at most). A configured cap above its share is
//! lowered, with a warning naming the key.

use crate::config::Config;
use tracing::{info, warn};

/// Descriptors kept for everything that is not a door connection.
pub const RESERVED: u64 = 64;

/// The lowest `RLIMIT_NOFILE` cerberus starts with.
pub const MIN_LIMIT: u64 = 128;

/// The connection caps that fit a descriptor limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub limit: u64,
    pub socket: usize,
    pub forward_auth: usize,
    pub admin: usize,
}

/// Splits `limit` descriptors between the doors, each at most its configured cap.
pub fn plan(
    limit: u64,
    socket: usize,
    forward_auth: usize,
    admin: usize,
) -> Result<Budget, String> {
    if limit < MIN_LIMIT {
        return Err(format!(
            "the open-file limit is {limit}; cerberus needs at least {MIN_LIMIT} (raise `ulimit -n` or LimitNOFILE=)"
        ));
    }
    let usable = usize::try_from(limit - RESERVED).unwrap_or(usize::MAX);
    let socket = socket.min(usable / 2);
    let http = usable - socket;
    let admin = admin.min((http / 8).max(1));
    let forward_auth = forward_auth.min(http - admin);
    Ok(Budget {
        limit,
        socket,
        forward_auth,
        admin,
    })
}

/// Raises the soft open-file limit to the hard one; returns (before, after).
pub fn raise_limit() -> std::io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let before = lim.rlim_cur;
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        lim = raised;
    }
    Ok((before, lim.rlim_cur))
}

/// Raises the limit, then lowers the caps in `config` to fit it, logging both.
pub fn fit(config: &mut Config) -> anyhow::Result<Budget> {
    let limit = match raise_limit() {
        Ok((before, after)) if before != after => {
            info!("open-file limit raised from {before} to {after} (the hard limit)");
            after
        }
        Ok((_, after)) => after,
        Err(e) => anyhow::bail!("cannot read the open-file limit: {e}"),
    };
    let budget = plan(
        limit,
        config.socket_max_connections,
        config.forward_auth_max_connections,
        config.admin_max_connections,
    )
    .map_err(anyhow::Error::msg)?;
    for (key, wanted, got) in [
        (
            "socket_max_connections",
            config.socket_max_connections,
            budget.socket,
        ),
        (
            "forward_auth_max_connections",
            config.forward_auth_max_connections,
            budget.forward_auth,
        ),
        (
            "admin_max_connections",
            config.admin_max_connections,
            budget.admin,
        ),
    ] {
        if got < wanted {
            warn!(
                "{key} lowered from {wanted} to {got} to fit the open-file limit of {limit} \
                 (raise `ulimit -n` or LimitNOFILE= to serve more)"
            );
        }
    }
    config.socket_max_connections = budget.socket;
    config.forward_auth_max_connections = budget.forward_auth;
    config.admin_max_connections = budget.admin;
    info!(
        "connection caps: socket {}, forward_auth {}, admin {} (open-file limit {limit}, {RESERVED} kept for the rest)",
        budget.socket, budget.forward_auth, budget.admin
    );
    Ok(budget)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_caps_never_exceed_the_limit() {
        for limit in [MIN_LIMIT, 256, 1024, 4096, 1 << 20] {
            for caps in [
                (1, 1, 1),
                (1024, 1024, 64),
                (1_000_000, 1_000_000, 1_000_000),
            ] {
                let b = plan(limit, caps.0, caps.1, caps.2).unwrap();
                let used = RESERVED + (b.socket + b.forward_auth + b.admin) as u64;
                assert!(used <= limit, "{limit} {caps:?}: {b:?}");
                assert!(
                    b.socket >= 1 && b.forward_auth >= 1 && b.admin >= 1,
                    "{b:?}"
                );
                assert!(b.socket <= caps.0 && b.forward_auth <= caps.1 && b.admin <= caps.2);
            }
        }
    }

    #[test]
    fn systemds_default_keeps_half_for_the_socket() {
        let b = plan(1024, 1024, 1024, 64).unwrap();
        assert_eq!(
            b,
            Budget {
                limit: 1024,
                socket: 480,
                forward_auth: 420,
                admin: 60
            }
        );
        // A large limit leaves the configured caps alone.
        let b = plan(1 << 20, 1024, 1024, 64).unwrap();
        assert_eq!((b.socket, b.forward_auth, b.admin), (1024, 1024, 64));
    }

    #[test]
    fn a_tiny_limit_is_refused_with_the_fix() {
        let e = plan(64, 1024, 1024, 64).unwrap_err();
        assert!(e.contains("ulimit -n"), "{e}");
    }
}
