//! One entry of the route table: method, path, who may call it, a summary and its handler, so
//! the router and the OpenAPI document are made from the same list (the table in `routes`).

use axum::handler::Handler;
use axum::routing::{self, MethodRouter};

use crate::state::AppState;

/// One route, for the router and the OpenAPI document.
pub struct Route {
    /// `GET`, `POST`.
    pub method: &'static str,
    /// Path with `{param}`s.
    pub path: &'static str,
    /// Who may call it: `device`, `bootstrap or none`, `viewer`, `operator`, `admin`, `hmac`,
    /// `none`; dashboard pages: `session` (viewer or more), `session (operator)`.
    pub auth: &'static str,
    /// One line.
    pub summary: &'static str,
    /// What answers it (for `method` only: built by [`Route::get`] and [`Route::post`]).
    pub handler: MethodRouter<AppState>,
}

impl Route {
    /// `GET path`, answered by `handler`.
    pub fn get<H, T>(
        path: &'static str,
        auth: &'static str,
        summary: &'static str,
        handler: H,
    ) -> Route
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        Route {
            method: "GET",
            path,
            auth,
            summary,
            handler: routing::get(handler),
        }
    }

    /// `POST path`, answered by `handler`.
    pub fn post<H, T>(
        path: &'static str,
        auth: &'static str,
        summary: &'static str,
        handler: H,
    ) -> Route
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        Route {
            method: "POST",
            path,
            auth,
            summary,
            handler: routing::post(handler),
        }
    }
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("auth", &self.auth)
            .field("summary", &self.summary)
            .finish_non_exhaustive()
    }
}
