//! `pingora-passthrough LISTEN UPSTREAM`: Pingora 0.9.1's stock HTTP proxy (`ProxyHttp` with
//! only `upstream_peer`), plain HTTP to one upstream address over its keep-alive pool, no
//! logging. What nxgate's framework costs before nxgate does anything.
use async_trait::async_trait;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;
use std::net::SocketAddr;

struct Passthrough(SocketAddr);

#[async_trait]
impl ProxyHttp for Passthrough {
    type CTX = ();
    fn new_ctx(&self) {}
    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.0, false, String::new())))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(listen), Some(upstream)) = (args.get(1), args.get(2).and_then(|a| a.parse::<SocketAddr>().ok())) else {
        eprintln!("usage: pingora-passthrough LISTEN_ADDR UPSTREAM_ADDR");
        std::process::exit(2);
    };
    // As many worker threads as CPUs this process may use, like nxgate; and a 1 s drain on
    // SIGTERM (Pingora's default waits 5 minutes), as the benchmark gives nxgate.
    let conf = ServerConf {
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        grace_period_seconds: Some(1),
        graceful_shutdown_timeout_seconds: Some(1),
        pid_file: std::env::temp_dir()
            .join(format!("pingora-passthrough-{}.pid", std::process::id()))
            .display()
            .to_string(),
        upgrade_sock: std::env::temp_dir()
            .join(format!("pingora-passthrough-{}.sock", std::process::id()))
            .display()
            .to_string(),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = http_proxy_service(&server.configuration, Passthrough(upstream));
    proxy.add_tcp(listen);
    server.add_service(proxy);
    server.run_forever();
}
