//! `gateway-agent`: the Vamp gateway agent (VGA) as a program: watches one key of a key-value
//! store and keeps a local HAProxy running its configuration. Its flags, environment and
//! defaults: [`vamp_examples::agent`].
//!
//! ```text
//! gateway-agent [--kv URL] [--key PATH] [--haproxy BIN] [--work-dir DIR] [--socket-dir DIR]
//!               [--health ADDR] [--metrics ADDR] [--metrics-store URL] [--bind-address IP] ...
//! gateway-agent check-health [--health ADDR]
//! ```

fn main() -> std::process::ExitCode {
    vamp_examples::agent::main(std::env::args().skip(1).collect())
}
