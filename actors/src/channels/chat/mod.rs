//! Chat providers: Slack, Discord and Microsoft Teams.

pub(crate) mod discord;
pub(crate) mod slack;
pub(crate) mod teams;
