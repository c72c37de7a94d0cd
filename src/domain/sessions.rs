//! Sessions on live connections: a connection's credentials can be renewed with a fresh token
//! without closing it (`authenticate`), and a token this server issued can be exchanged for a
//! fresh one (`refreshToken`).
//!
//! A connection holds its `Credentials`: who it is signed in as, now. Renewing swaps them; the
//! connection's expiry timer and the streams it follows watch them. A renewal never changes
//! the user, and a stream that the new credentials no longer allow (a role dropped, say) ends
//! with FORBIDDEN by the same rule that decides whether it may be opened (`may_follow`).
//!
//! Revocation (`disconnectUser`) is kept in the database, which every instance reads when it
//! checks a token, so a revoked token renews nowhere.

use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt};
use tokio::sync::watch;

use super::channels::Channel;
use super::users::ViewerError;
use super::{require_user, Domain, DomainError, DomainResult};
use crate::auth::{TokenError, Viewer};
use crate::db::user;

/// A live connection's current credentials, shared by the connection (which watches them to
/// move its expiry timer) and the operations running on it (`authenticate` swaps them,
/// streams re-check their rights when they change).
#[derive(Clone)]
pub struct Credentials(Arc<watch::Sender<Viewer>>);

impl Credentials {
    pub fn new(viewer: Viewer) -> Self {
        Self(Arc::new(watch::Sender::new(viewer)))
    }

    /// Who the connection is signed in as now.
    pub fn current(&self) -> Viewer {
        self.0.borrow().clone()
    }

    /// Changes from now on.
    pub fn watch(&self) -> watch::Receiver<Viewer> {
        self.0.subscribe()
    }
}

/// A connection's credentials after a renewal.
pub struct Session {
    pub user: user::Model,
    /// When the connection's token now expires.
    pub expires_at: DateTime<Utc>,
}

/// A token's `exp` (seconds since the epoch) as a time.
pub fn expiry_time(exp: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(exp, 0).single().unwrap_or_else(Utc::now)
}

/// What a stream follows, so that its right can be checked again under new credentials.
#[derive(Clone, Debug)]
pub enum Followed {
    Messages {
        room_id: String,
    },
    Typing {
        room_id: String,
    },
    Presence {
        room_id: Option<String>,
    },
    Notifications,
    Leaderboard,
    Events {
        channels: Option<Vec<String>>,
    },
    /// The operator console's figures (admins).
    ServerStats,
}

impl Followed {
    /// `events(channels)` as `viewer` opened it: without channels, the viewer's own ones at
    /// that time (`user:<id>`, `role:<role>`, `broadcast`), so that a role dropped since ends
    /// the stream rather than leaving it on the old role's channel.
    pub fn events(viewer: &Viewer, channels: Option<Vec<String>>) -> Self {
        let channels = match (channels, viewer.user()) {
            (Some(names), _) if !names.is_empty() => Some(names),
            (_, Some(user)) => Some(Channel::own(user).iter().map(Channel::name).collect()),
            (_, None) => None,
        };
        Followed::Events { channels }
    }
}

impl Domain {
    /// Renews a live connection's credentials with `token`: checked like any token (signature,
    /// expiry, issuer and audience, revocation), it must name the connection's user (another
    /// user's is FORBIDDEN and nothing changes). `None`: the request came over HTTP, where
    /// there is no connection to renew (BAD_USER_INPUT).
    pub async fn authenticate(
        &self,
        credentials: Option<&Credentials>,
        token: &str,
    ) -> DomainResult<Session> {
        let Some(credentials) = credentials else {
            crate::metrics::token_renewal("refused");
            return Err(DomainError::bad_input(
                "authenticate renews the credentials of a WebSocket connection; over HTTP there \
                 is none: send the token with each request (Authorization: Bearer)",
            ));
        };
        let current = credentials.current();
        let Some(me) = current.user() else {
            crate::metrics::token_renewal("refused");
            return Err(DomainError::TokenRefused(
                "this connection is anonymous: open a new one with a token".into(),
            ));
        };
        let refused = |why: String| {
            crate::metrics::token_renewal("refused");
            DomainError::TokenRefused(why)
        };
        // The user is compared before anything is read or provisioned: another user's token
        // changes nothing at all.
        let claims = self
            .tokens
            .verify(token)
            .map_err(|e| refused(format!("the new token is refused: {e}")))?;
        // Within the clock skew tolerated at sign-in, a token already past its `exp` would
        // close the connection at once: a renewal must extend it.
        if claims.exp <= Utc::now().timestamp() {
            return Err(refused("the new token is refused: token expired".into()));
        }
        if claims.sub != me.id {
            crate::metrics::token_renewal("forbidden");
            return Err(DomainError::Forbidden(
                "the new token is another user's: a connection keeps its user".into(),
            ));
        }
        let signed_in = match self.sign_in(token).await {
            Ok(signed_in) => signed_in,
            Err(ViewerError::Token(TokenError::Expired)) => {
                return Err(refused("the new token is refused: token expired".into()))
            }
            Err(ViewerError::Token(_)) => {
                return Err(refused(
                    "the new token is refused: invalid or revoked token".into(),
                ))
            }
            Err(ViewerError::Domain(e)) => return Err(e),
        };
        let expires_at = signed_in
            .viewer
            .user()
            .map_or_else(Utc::now, |u| expiry_time(u.expires_at));
        credentials.0.send_replace(signed_in.viewer);
        crate::metrics::token_renewal("renewed");
        Ok(Session {
            user: signed_in.user,
            expires_at,
        })
    }

    /// A fresh token for the viewer's, which this server must have issued and which must still
    /// be valid (not revoked since). A token from an external identity provider is renewed
    /// with that provider (FORBIDDEN here).
    pub async fn refresh_token(&self, viewer: &Viewer) -> DomainResult<(String, user::Model)> {
        let me = require_user(viewer)?;
        if !me.issued_here {
            return Err(DomainError::Forbidden(
                "this token was issued by an external identity provider and cannot be \
                 refreshed here: renew it with the provider, then call authenticate"
                    .into(),
            ));
        }
        if me.expires_at <= Utc::now().timestamp() {
            return Err(DomainError::TokenRefused("token expired".into()));
        }
        let found = self
            .user_by_id(&me.id)
            .await?
            .ok_or_else(|| DomainError::TokenRefused("unknown user".into()))?;
        if found
            .tokens_revoked_at
            .is_some_and(|revoked| me.issued_at <= revoked.timestamp())
        {
            return Err(DomainError::TokenRefused("token revoked".into()));
        }
        let token = self
            .tokens
            .mint(&found.id, &found.username, &me.role, self.rules.token_ttl)?;
        Ok((token, found))
    }

    /// Whether `viewer` may follow what a stream follows: the rule that decides whether the
    /// stream may be opened (an error is the refusal).
    pub async fn may_follow(&self, viewer: &Viewer, followed: &Followed) -> DomainResult<()> {
        match followed {
            Followed::Messages { room_id } | Followed::Typing { room_id } => {
                self.require_member(viewer, room_id).await.map(drop)
            }
            Followed::Presence { room_id } => self
                .online_users(viewer, room_id.as_deref())
                .await
                .map(drop),
            Followed::Notifications => require_user(viewer).map(drop),
            Followed::Leaderboard => Ok(()),
            Followed::ServerStats => super::require_admin(viewer).map(drop),
            Followed::Events { channels } => self
                .resolve_channels(viewer, channels.as_deref())
                .await
                .map(drop),
        }
    }

    /// `feed`, opened under `credentials`, until the credentials change to ones that may no
    /// longer follow it (`may_follow`): it then ends with that refusal, after everything
    /// delivered before the change. A feed still allowed under a role other than the one it
    /// was opened under decided its own endings for that role (an admin's never ends on a
    /// leave), so from then on its right is checked after each item it delivers: it ends right
    /// after the one that ended the right (a member's own "left" message). Without credentials
    /// (a request over HTTP, a shared execution) the feed is unchanged.
    pub fn while_allowed<T: Send + 'static>(
        self: &Arc<Self>,
        credentials: Option<&Credentials>,
        followed: Followed,
        feed: impl Stream<Item = DomainResult<T>> + Send + 'static,
    ) -> BoxStream<'static, DomainResult<T>> {
        let Some(credentials) = credentials else {
            return feed.boxed();
        };
        let mut changes = credentials.watch();
        let role = |viewer: &Viewer| viewer.user().map(|u| u.role.clone());
        let opened_as = role(&credentials.current());
        let domain = self.clone();
        Box::pin(async_stream::stream! {
            futures_util::pin_mut!(feed);
            let mut check_each = false;
            loop {
                // Decided here, delivered below: a stream's `yield` cannot sit inside `select!`.
                let step = tokio::select! {
                    item = feed.next() => Step::Item(item),
                    changed = changes.changed() => Step::Renewed(changed.is_ok()),
                };
                match step {
                    Step::Item(Some(item)) => {
                        yield item;
                        if check_each {
                            let viewer = changes.borrow().clone();
                            if let Err(e) = domain.may_follow(&viewer, &followed).await {
                                yield Err(e);
                                return;
                            }
                        }
                    }
                    Step::Item(None) => return,
                    Step::Renewed(true) => {
                        let viewer = changes.borrow_and_update().clone();
                        if let Err(e) = domain.may_follow(&viewer, &followed).await {
                            yield Err(e);
                            return;
                        }
                        check_each = role(&viewer) != opened_as;
                    }
                    // The credentials are gone with their connection: nothing renews them.
                    Step::Renewed(false) => {
                        while let Some(item) = feed.next().await {
                            yield item;
                        }
                        return;
                    }
                }
            }
        })
    }
}

/// What woke a guarded stream.
enum Step<T> {
    Item(Option<T>),
    /// The credentials changed (`false`: they can no longer change).
    Renewed(bool),
}
