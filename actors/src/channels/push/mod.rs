//! Push providers: Firebase Cloud Messaging, Apple Push Notification
//! service and Web Push, and what they share: a bearer token made from a
//! signed JWT and cached until it is due for renewal.

pub(crate) mod apns;
pub(crate) mod fcm;
pub(crate) mod webpush;

use std::time::{Duration, Instant};

/// A bearer token and when to make a new one.
#[derive(Debug, Default)]
pub(crate) struct CachedToken {
    inner: tokio::sync::Mutex<Option<(String, Instant)>>,
}

impl CachedToken {
    /// The cached token, or a new one from `make` (one maker at a time:
    /// concurrent sends wait for the same renewal).
    pub(crate) async fn get<F, Fut, E>(&self, make: F) -> Result<String, E>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<(String, Duration), E>>,
    {
        let mut guard = self.inner.lock().await;
        if let Some((token, until)) = guard.as_ref()
            && Instant::now() < *until
        {
            return Ok(token.clone());
        }
        let (token, valid) = make().await?;
        *guard = Some((token.clone(), Instant::now() + valid));
        Ok(token)
    }

    /// Forgets the token (the provider refused it).
    pub(crate) async fn clear(&self) {
        *self.inner.lock().await = None;
    }
}

/// A UUID made from the attempt's key (the same key, the same UUID):
/// what APNs takes as `apns-id`.
pub(crate) fn uuid_of(key: &str) -> String {
    use sha2::Digest as _;
    let d = sha2::Sha256::digest(key.as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    // Version 8 (custom), RFC 9562 variant.
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}
