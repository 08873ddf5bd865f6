//! The axum JSON API and the web UI. Nothing is implemented yet: the service and its API are issue 4.
