//! The service layer: the operations both HTTP faces perform (the JSON API in `api/`, the HTML
//! dashboard in `dashboard/`), with the audit records they leave. The faces parse, authenticate
//! and render; what an act does lives here once. Dependencies point one way: faces → service →
//! engine, db; nothing here knows either face.

pub mod alerts;
pub mod bootstrap;
pub mod devices;
pub mod error;
pub mod live;
pub mod logs;
pub mod rollouts;
pub mod stop;

pub use crate::state::AppState;
pub use error::ServiceError;
