//! knit's daemon and CLI as a library: the `knit` binary (`main.rs`) is
//! its command line, and the fuzz targets (`fuzz/`) call [`fuzzing`].
mod cgroup;
pub mod cli;
mod control;
mod daemon;
mod datapath;
mod health;
mod hosts;
mod listen;
mod logging;
mod metrics;
mod outlier;
mod proxy;
mod registry;
mod systemd;
pub mod tls;

/// Entry points for the fuzz targets in `fuzz/` (and their corpus replay
/// in the unit tests): each takes arbitrary bytes and must never panic.
pub mod fuzzing {
    use std::path::Path;

    use proxy_common::{maps::SockKey, select::pick_slot};

    /// The HTTP edge: `data` as a downstream connection's bytes, every
    /// request head in it put through what the proxy does to heads.
    pub fn request_head(data: &[u8]) {
        crate::proxy::fuzz_request_head(data);
    }

    /// `knit apply`'s parser and validators on one file (an object or an
    /// array of ECS objects), with nothing registered before.
    pub fn ecs_json(data: &[u8]) {
        let files = [("fuzz.json".to_string(), data.to_vec())];
        if let Ok(plan) = proxy_config::plan(&files, &proxy_config::Existing::default()) {
            // A plan that passed is applied as is: a second pass over it
            // agrees.
            let again = proxy_config::plan(&files, &proxy_config::Existing::default());
            assert!(
                again.is_ok_and(|p| p == plan),
                "planning is not deterministic"
            );
        }
    }

    /// knit.toml's parser and validation.
    pub fn knit_toml(data: &[u8]) {
        if let Ok(text) = std::str::from_utf8(data) {
            let _ = proxy_config::parse_daemon_config(text, Path::new("fuzz.toml"));
        }
    }

    /// The map encoding shared with the kernel: sockhash keys built from
    /// the context fields sockops and sk_msg see (both ends of one
    /// connection must meet, v4-mapped sockets key like v4 ones), and the
    /// slot choice of the connect hook.
    pub fn map_encoding(data: &[u8]) {
        let Some(words) = data.get(..52) else {
            return;
        };
        let w = |i: usize| {
            let mut b = [0u8; 4];
            b.copy_from_slice(&words[i * 4..i * 4 + 4]);
            u32::from_ne_bytes(b)
        };
        let family = if w(0) & 1 == 0 { 2 } else { 10 };
        let (l4, r4) = (w(1), w(2));
        let l6 = [w(3), w(4), w(5), w(6)];
        let r6 = [w(7), w(8), w(9), w(10)];
        let local_port = w(11) & 0xffff;
        let remote_port_be = u32::from(w(12) as u16).to_be();
        if let Some(k) = SockKey::from_ctx(family, (l4, r4), (l6, r6), local_port, remote_port_be) {
            assert_eq!(k.peer().peer(), k);
            assert!(k.remote_port <= 0xffff);
            // The other end of the connection, as the kernel shows it.
            let other = SockKey::from_ctx(
                family,
                (r4, l4),
                (r6, l6),
                k.remote_port,
                k.local_port.to_be(),
            );
            assert_eq!(other, Some(k.peer()));
            if family == 2 {
                let m = 0xffff_u32.to_be();
                let mapped = SockKey::from_ctx(
                    10,
                    (0, 0),
                    ([0, 0, m, l4], [0, 0, m, r4]),
                    local_port,
                    remote_port_be,
                );
                assert_eq!(mapped, Some(k));
            }
        }
        let (cursor, count) = (w(11), w(12) % 1024);
        match pick_slot(cursor, count) {
            Some(slot) => assert!(slot < count),
            None => assert_eq!(count, 0),
        }
    }

    #[cfg(test)]
    mod tests {
        /// Every input of the fuzz corpus (`fuzz/corpus/<target>/`) and
        /// every crash turned regression (`fuzz/regressions/<target>/`)
        /// still passes its target.
        #[test]
        fn the_fuzz_corpus_replays() {
            let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
            type Target = fn(&[u8]);
            let targets: [(&str, Target); 4] = [
                ("ecs_json", super::ecs_json),
                ("knit_toml", super::knit_toml),
                ("http_head", super::request_head),
                ("map_encoding", super::map_encoding),
            ];
            let mut replayed = 0;
            for (name, target) in targets {
                for dir in ["corpus", "regressions"] {
                    let Ok(entries) = std::fs::read_dir(root.join(dir).join(name)) else {
                        continue;
                    };
                    for e in entries.flatten() {
                        if let Ok(data) = std::fs::read(e.path()) {
                            target(&data);
                            replayed += 1;
                        }
                    }
                }
            }
            assert!(replayed > 0, "no fuzz corpus under {}", root.display());
        }

        /// The HTTP edge target really parses: two pipelined requests.
        #[test]
        fn the_http_edge_target_sees_requests() {
            let h1 = b"GET /a?x=1 HTTP/1.1\r\nHost: web:8080\r\n\r\nPOST /b HTTP/1.1\r\nHost: web\r\nContent-Length: 3\r\n\r\nabc";
            assert_eq!(crate::proxy::fuzz_request_head(h1), 2);
            assert_eq!(crate::proxy::fuzz_request_head(b"\x00garbage"), 0);
        }
    }
}
