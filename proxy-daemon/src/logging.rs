//! The daemon's logs: `tracing` to stderr (journald keeps them under
//! systemd), as text or JSON lines (`[log] format`), filtered by `[log]
//! level` or $KNIT_LOG (an `EnvFilter` directive such as `info` or
//! `knit=debug,warn`). The filter can change while the daemon runs: SIGHUP
//! reloads it from the config, `knit log-level` sets it directly.
use std::sync::OnceLock;

use proxy_config::{LogConfig, LogFormat};
use tracing_subscriber::{
    EnvFilter, Registry, layer::SubscriberExt, reload, util::SubscriberInitExt,
};

static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// Parse a filter directive, with a message that says what is wrong.
pub fn parse(filter: &str) -> Result<EnvFilter, String> {
    EnvFilter::try_new(filter).map_err(|e| {
        format!("log level {filter:?} is not a filter ({e}); use e.g. \"info\", \"debug\" or \"knit=debug,warn\"")
    })
}

/// Install the subscriber. $KNIT_LOG, when set, wins over `[log] level`.
pub fn init(cfg: &LogConfig) -> Result<(), String> {
    let level = std::env::var("KNIT_LOG").unwrap_or_else(|_| cfg.level.clone());
    let (filter, handle) = reload::Layer::new(parse(&level)?);
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let registry = tracing_subscriber::registry().with(filter);
    match cfg.format {
        LogFormat::Json => registry.with(fmt.json()).try_init(),
        LogFormat::Text => registry.with(fmt).try_init(),
    }
    .map_err(|e| e.to_string())?;
    let _ = FILTER.set(handle);
    Ok(())
}

/// Change the filter now.
pub fn set_level(filter: &str) -> Result<(), String> {
    let f = parse(filter)?;
    FILTER
        .get()
        .ok_or_else(|| "logging is not set up".to_string())?
        .reload(f)
        .map_err(|e| e.to_string())
}
