//! flashsale: a flash-sale HTTP server. Every period (an hour by default) a
//! new sale of generated items opens; shoppers reserve an item with
//! `POST /checkout` and confirm what they reserved with `POST /purchase`.
//! Redis decides (one Lua script per request), Postgres records (a writer
//! thread, in batches), and each CPU core runs its own monoio runtime.
//!
//! The modules, from the bottom up; each uses only modules listed before it:
//!
//! - [`error`], [`event`], [`net`], [`logging`], [`sale`]: the error type, a
//!   per-core async flag, appending reads on owned buffers, log output, and
//!   the sale domain (periods, item ids, codes), free of IO; [`allocator`]:
//!   handing mimalloc's free memory back to the OS.
//! - [`http`]: HTTP/1.1 over monoio; knows nothing of sales.
//! - [`redis_client`]: the per-core pipelined Redis client and the Lua scripts.
//! - [`config`], [`metrics`]: every knob (env and flags); per-core counters
//!   and histograms in Prometheus text.
//! - [`clock`]: this instance's estimate of Redis's clock, the one clock a
//!   sale's life follows.
//! - [`store`]: Postgres (pool, migrations, sale rows, the writer thread).
//! - [`reconcile`]: a sale's Redis state made whole from Postgres after Redis
//!   lost writes, and the cores' requests for it.
//! - [`api`]: routes, parameters, JSON shapes; one `Api` per core.
//! - [`rotator`]: the thread that prepares and publishes the sales.
//! - [`server`]: the core threads, one monoio runtime each.
//! - [`check`]: `flashsale check`, one sale's Redis state against Postgres.
//! - [`app`]: the process: starts everything in order, shuts down in order.
//!
//! The binary (`src/main.rs`) parses the command line and calls [`app::run`].

pub mod allocator;
pub mod api;
pub mod app;
pub mod check;
pub mod clock;
pub mod config;
pub mod error;
pub mod event;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod reconcile;
pub mod redis_client;
pub mod rotator;
pub mod sale;
pub mod server;
pub mod store;
