//! Users, passwords (argon2id), sessions (random tokens, stored hashed) and lockout.

use super::catalog::{now, random_hex};
use super::Service;
use anyhow::Result;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use web::*;

/// Failed logins before an account is locked, and for how long.
const MAX_FAILED: i64 = 5;
const LOCK_MINUTES: i64 = 15;
const SESSION_HOURS: i64 = 12;
const MIN_PASSWORD: usize = 10;

fn hash_password(password: &str) -> Result<String, ApiError> {
    let mut salt = [0u8; 16];
    getrandom::getrandom(&mut salt).expect("OS randomness");
    let salt = SaltString::encode_b64(&salt).map_err(ApiError::internal)?;
    Ok(Argon2::default().hash_password(password.as_bytes(), &salt).map_err(ApiError::internal)?.to_string())
}

fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
}

fn token_hash(token: &str) -> String {
    blake3::hash(token.as_bytes()).to_hex().to_string()
}

type UserRow = (i64, String, String, i64, i64, Option<String>);

impl Service {
    /// The first start makes user "admin" with a random password, written to `path` (0600).
    pub(super) async fn ensure_admin(&self, path: &std::path::Path) -> Result<()> {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM users").fetch_one(&self.db).await?;
        if n > 0 {
            return Ok(());
        }
        let password = random_hex(10);
        let hash = hash_password(&password).map_err(|e| anyhow::anyhow!("{e}"))?;
        sqlx::query("INSERT INTO users (name, role, password_hash, must_change) VALUES ('admin', 'admin', $1, 1)")
            .bind(hash)
            .execute(&self.db)
            .await?;
        let _ = std::fs::remove_file(path);
        super::write_private(path, format!("{password}\n").as_bytes())?;
        eprintln!(
            "holdfast: created user admin; its initial password is in {} and must be changed at first login",
            path.display()
        );
        Ok(())
    }

    pub(super) async fn login_user(&self, l: Login) -> ApiResult<(String, Session)> {
        let refused = || ApiError::new(401, "wrong user name or password");
        let row: Option<UserRow> = sqlx::query_as(
            "SELECT id, role, password_hash, must_change, failed_logins, locked_until FROM users WHERE name = $1",
        )
        .bind(&l.user)
        .fetch_optional(&self.db)
        .await
        .map_err(ApiError::internal)?;
        let Some((id, role, hash, must_change, failed, locked_until)) = row else {
            // Same work as for a real user, so timing does not tell which names exist.
            verify_password(&l.password, "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$AAAAAAAAAAAAAAAAAAAAAA");
            return Err(refused());
        };
        let now_s = now();
        if let Some(until) = locked_until.filter(|u| u.as_str() > now_s.as_str()) {
            self.audit_log(&l.user, "login refused", "account locked").await?;
            return Err(ApiError::new(
                403,
                format!("user {} is locked after repeated failed logins until {until}", l.user),
            ));
        }
        if !verify_password(&l.password, &hash) {
            let failed = failed + 1;
            let lock = (failed >= MAX_FAILED)
                .then(|| (chrono::Utc::now() + chrono::Duration::minutes(LOCK_MINUTES)).to_rfc3339());
            sqlx::query("UPDATE users SET failed_logins = $1, locked_until = $2 WHERE id = $3")
                .bind(if lock.is_some() { 0 } else { failed })
                .bind(&lock)
                .bind(id)
                .execute(&self.db)
                .await
                .map_err(ApiError::internal)?;
            let detail = if lock.is_some() { "wrong password; account locked" } else { "wrong password" };
            self.audit_log(&l.user, "login failed", detail).await?;
            return Err(refused());
        }
        sqlx::query("UPDATE users SET failed_logins = 0, locked_until = NULL WHERE id = $1")
            .bind(id)
            .execute(&self.db)
            .await
            .map_err(ApiError::internal)?;
        let token = random_hex(32);
        let csrf = random_hex(16);
        let expires = (chrono::Utc::now() + chrono::Duration::hours(SESSION_HOURS)).to_rfc3339();
        sqlx::query("INSERT INTO sessions (token_hash, user_id, csrf, expires) VALUES ($1, $2, $3, $4)")
            .bind(token_hash(&token))
            .bind(id)
            .bind(&csrf)
            .bind(expires)
            .execute(&self.db)
            .await
            .map_err(ApiError::internal)?;
        self.audit_log(&l.user, "login", "").await?;
        let role =
            Role::parse(&role).ok_or_else(|| ApiError::internal(format!("user {} has an unknown role", l.user)))?;
        Ok((token, Session { user: l.user, role, csrf, must_change_password: must_change != 0 }))
    }

    pub(super) async fn session_of(&self, token: &str) -> ApiResult<Option<Session>> {
        let row: Option<(String, String, String, i64)> = sqlx::query_as(
            "SELECT u.name, u.role, s.csrf, u.must_change FROM sessions s JOIN users u ON u.id = s.user_id \
             WHERE s.token_hash = $1 AND s.expires > $2",
        )
        .bind(token_hash(token))
        .bind(chrono::Utc::now().to_rfc3339())
        .fetch_optional(&self.db)
        .await
        .map_err(ApiError::internal)?;
        Ok(row.and_then(|(user, role, csrf, must)| {
            Some(Session { user, role: Role::parse(&role)?, csrf, must_change_password: must != 0 })
        }))
    }

    pub(super) async fn end_session(&self, token: &str) -> ApiResult<()> {
        sqlx::query("DELETE FROM sessions WHERE token_hash = $1")
            .bind(token_hash(token))
            .execute(&self.db)
            .await
            .map_err(ApiError::internal)?;
        Ok(())
    }

    pub(super) async fn set_password(&self, s: &Session, c: PasswordChange) -> ApiResult<()> {
        let (hash,): (String,) = sqlx::query_as("SELECT password_hash FROM users WHERE name = $1")
            .bind(&s.user)
            .fetch_one(&self.db)
            .await
            .map_err(ApiError::internal)?;
        if !verify_password(&c.old, &hash) {
            return Err(ApiError::field("old", "is not the current password"));
        }
        if c.new.chars().count() < MIN_PASSWORD {
            return Err(ApiError::field("new", format!("must have at least {MIN_PASSWORD} characters")));
        }
        if c.new == c.old {
            return Err(ApiError::field("new", "must differ from the old password"));
        }
        sqlx::query("UPDATE users SET password_hash = $1, must_change = 0 WHERE name = $2")
            .bind(hash_password(&c.new)?)
            .bind(&s.user)
            .execute(&self.db)
            .await
            .map_err(ApiError::internal)?;
        self.audit_log(&s.user, "password changed", "").await
    }
}
