//! PostgreSQL backend (work in progress: not implemented yet).

use futures::future::BoxFuture;
use uuid::Uuid;

use super::{
    Backend, ConnectOptions, EventStore, IdempotencyKey, IdempotencyRecord, InboundRecord,
    IngestOutcome, IngestWrite, RecordedEvent, StoreCounts, StoreError,
};

/// Placeholder until the backend lands; `connect` refuses every URL.
#[derive(Debug)]
pub struct PostgresStore;

impl PostgresStore {
    pub async fn connect(url: &str, _options: &ConnectOptions) -> Result<Self, StoreError> {
        Err(StoreError::UnsupportedUrl(url.to_owned()))
    }
}

impl EventStore for PostgresStore {
    fn backend(&self) -> Backend {
        Backend::Postgres
    }
    fn migrate(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        unimplemented!()
    }
    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        unimplemented!()
    }
    fn commit_ingest<'a>(
        &'a self,
        _batch: &'a [IngestWrite],
    ) -> BoxFuture<'a, Result<Vec<IngestOutcome>, StoreError>> {
        unimplemented!()
    }
    fn inbound(&self, _id: Uuid) -> BoxFuture<'_, Result<Option<InboundRecord>, StoreError>> {
        unimplemented!()
    }
    fn inbound_by_control_id<'a>(
        &'a self,
        _h: &'a str,
        _c: &'a str,
    ) -> BoxFuture<'a, Result<Vec<InboundRecord>, StoreError>> {
        unimplemented!()
    }
    fn idempotency<'a>(
        &'a self,
        _k: &'a IdempotencyKey,
    ) -> BoxFuture<'a, Result<Option<IdempotencyRecord>, StoreError>> {
        unimplemented!()
    }
    fn read_stream<'a>(
        &'a self,
        _h: &'a str,
        _s: &'a str,
    ) -> BoxFuture<'a, Result<Vec<RecordedEvent>, StoreError>> {
        unimplemented!()
    }
    fn counts(&self) -> BoxFuture<'_, Result<StoreCounts, StoreError>> {
        unimplemented!()
    }
}
