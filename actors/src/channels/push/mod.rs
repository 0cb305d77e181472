//! Push providers (FCM, APNs, Web Push): not built yet.
