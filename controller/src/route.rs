//! One entry of the route table: method, path, who may call it, a summary and its handler, so
//! the router and the OpenAPI document are made from the same list (the table in `routes`).
//! The handler's description (its body, query, answer and refusals) is taken from its own
//! types when the route is made ([`crate::openapi::DescribeHandler`]).

use axum::handler::Handler;
use axum::routing::{self, MethodRouter};

use crate::openapi::{DescribeHandler, Operation};
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
    /// Statuses the handler answers through its error type beyond those its arguments, its
    /// credential and the router give (a 409 of a conflict, a 429 of a rate limit).
    pub errors: &'static [u16],
    /// The media type of its 200 answer when the answer type does not say (a `Response`).
    pub produces: Option<&'static str>,
    /// Describes the handler from its types (what [`DescribeHandler`] says of it).
    pub describe: fn(&mut Operation<'_>),
}

impl Route {
    /// `GET path`, answered by `handler`.
    pub fn get<H, T, A>(
        path: &'static str,
        auth: &'static str,
        summary: &'static str,
        handler: H,
    ) -> Route
    where
        H: Handler<T, AppState> + DescribeHandler<A>,
        T: 'static,
    {
        Route {
            method: "GET",
            path,
            auth,
            summary,
            handler: routing::get(handler),
            errors: &[],
            produces: None,
            describe: <H as DescribeHandler<A>>::describe,
        }
    }

    /// `POST path`, answered by `handler`.
    pub fn post<H, T, A>(
        path: &'static str,
        auth: &'static str,
        summary: &'static str,
        handler: H,
    ) -> Route
    where
        H: Handler<T, AppState> + DescribeHandler<A>,
        T: 'static,
    {
        Route {
            method: "POST",
            path,
            auth,
            summary,
            handler: routing::post(handler),
            errors: &[],
            produces: None,
            describe: <H as DescribeHandler<A>>::describe,
        }
    }

    /// The handler also answers these statuses through its error type.
    pub fn errors(mut self, statuses: &'static [u16]) -> Route {
        self.errors = statuses;
        self
    }

    /// Its 200 answer is of this media type.
    pub fn produces(mut self, media: &'static str) -> Route {
        self.produces = Some(media);
        self
    }
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("auth", &self.auth)
            .field("summary", &self.summary)
            .field("errors", &self.errors)
            .finish_non_exhaustive()
    }
}
