//! When a failed upstream attempt may be sent again on a fresh connection.
//!
//! Most of NXCloud's endpoints start or stop phone calls to real people. If NXCloud
//! received `createAndCall` and the connection then broke before the answer, sending it
//! again creates the same task twice and dials the same numbers twice. nxgate cannot know
//! whether a request that left it was acted on, so the rule is the one Go's HTTP client
//! follows: once any byte of a request may have reached the server, it is sent again
//! only if its path is idempotent (`routes.idempotent_paths`, the read-only endpoints by
//! default).
//!
//! A retry exists at all for one reason: a pooled keep-alive connection the server closed
//! while it sat idle fails on first use, through no fault of the request. So only a
//! *reused* connection is ever retried, at most once. A failure on a fresh connection is
//! the upstream's answer and is reported as it is.
//!
//! How the gateway tells "nothing written" from "written" with Pingora is described at
//! [`AttemptStage::BeforeWrite`] (and in `docs/pingora.md` §4).

/// How far an upstream attempt got when it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptStage {
    /// No connection: the TCP connect or the TLS handshake failed. Only a fresh
    /// connection connects (a pooled one is already established).
    Connect,
    /// Writing the request header failed, so the server never received a complete
    /// request header and cannot have acted on the request. With Pingora this is
    /// `HttpSession::write_request_header` returning an error: it hands the header to the
    /// socket with one `write_all` and a flush, and marks the request written only after
    /// both succeed. A prefix of the header may have gone out (`write_all` can fail after
    /// a short write), but an incomplete header is not a request.
    BeforeWrite,
    /// The header write succeeded (the kernel accepted the bytes, which may already be on
    /// the wire), then writing or flushing the body failed: some or all of the request
    /// may have reached the server.
    Sending,
    /// The whole request was written and no response header arrived (reset or closed).
    /// The server may have acted on the request and broken the connection before
    /// answering.
    AwaitingResponse,
    /// A response header arrived and the response then broke off. The connection was
    /// not a stale one (the server answered on it), so this is reported, never retried.
    ReadingResponse,
}

/// Whether the connection an attempt used was new or taken from the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connection {
    /// Opened for this attempt.
    Fresh,
    /// A kept-alive connection taken from the pool.
    Reused,
}

/// Whether sending a request twice has the same effect as sending it once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idempotency {
    /// Its path is in `routes.idempotent_paths`.
    Idempotent,
    /// Anything else: it may start or stop phone calls.
    NotIdempotent,
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "a failed attempt must either be retried or reported"]
pub enum Retry {
    /// Send the same request once more, on a fresh connection.
    Once,
    /// Report the failure to the caller.
    Never,
}

/// The rule: a reused connection that failed before any request byte was written is
/// retried once for every path; after the header was written, only an idempotent request
/// is; a failure on a fresh connection, or once a response had begun, is never retried.
/// "Once" is the caller's to keep: it asks again only for the first failure.
pub fn after_failure(stage: AttemptStage, connection: Connection, idempotency: Idempotency) -> Retry {
    match (connection, stage) {
        (Connection::Fresh, _) => Retry::Never,
        (Connection::Reused, AttemptStage::BeforeWrite) => Retry::Once,
        (Connection::Reused, AttemptStage::Sending | AttemptStage::AwaitingResponse) => match idempotency {
            Idempotency::Idempotent => Retry::Once,
            Idempotency::NotIdempotent => Retry::Never,
        },
        (Connection::Reused, AttemptStage::Connect | AttemptStage::ReadingResponse) => Retry::Never,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use AttemptStage::*;
    use Idempotency::*;
    use Retry::{Never, Once};

    /// Every stage × idempotent or not, on a reused connection: the whole rule in one table.
    #[test]
    fn a_reused_connection_is_retried_only_before_writing_or_for_an_idempotent_path() {
        // (stage, idempotent path, not idempotent path)
        let table = [
            (Connect, Never, Never),
            (BeforeWrite, Once, Once),
            (Sending, Once, Never),
            (AwaitingResponse, Once, Never),
            (ReadingResponse, Never, Never),
        ];
        for (stage, idempotent, not_idempotent) in table {
            assert_eq!(after_failure(stage, Connection::Reused, Idempotent), idempotent, "{stage:?}, idempotent");
            assert_eq!(
                after_failure(stage, Connection::Reused, NotIdempotent),
                not_idempotent,
                "{stage:?}, not idempotent"
            );
        }
    }

    /// A fresh connection failing is the upstream's answer, whatever the stage or path.
    #[test]
    fn a_fresh_connection_is_never_retried() {
        for stage in [Connect, BeforeWrite, Sending, AwaitingResponse, ReadingResponse] {
            for idempotency in [Idempotent, NotIdempotent] {
                assert_eq!(after_failure(stage, Connection::Fresh, idempotency), Never, "{stage:?}, {idempotency:?}");
            }
        }
    }
}
