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
    /// The first start makes user "admin" with a random password, written to the initial
    /// password file (0600) until admin changes it.
    pub(super) async fn ensure_admin(&self) -> Result<()> {
        let path = &self.initial_password;
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
        // One reply for an unknown name, a wrong password and a locked account, so it tells
        // nobody which user names exist; the audit log says which it was.
        let refused = || {
            ApiError::new(
                Problem::NotLoggedIn,
                format!(
                    "wrong user name or password, or the account is locked after {MAX_FAILED} failed logins \
                     (for {LOCK_MINUTES} minutes)"
                ),
            )
        };
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
            // The same work as any other refusal, so timing does not tell either.
            verify_password(&l.password, &hash);
            self.audit_log(&l.user, "login refused", &format!("account locked until {until}")).await?;
            return Err(refused());
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
            Role::parse(&role).ok_or_else(|| ApiError::server(format!("user {} has an unknown role", l.user)))?;
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
        if s.user == "admin" {
            // The file's password no longer opens anything: leave nothing that looks like one.
            let _ = std::fs::remove_file(&self.initial_password);
        }
        self.audit_log(&s.user, "password changed", "").await
    }

    pub(super) async fn session_of_token(&self, token: &str) -> ApiResult<Option<Session>> {
        let row: Option<(String, String)> = sqlx::query_as(
            "SELECT u.name, u.role FROM api_tokens t JOIN users u ON u.id = t.user_id WHERE t.token_hash = $1",
        )
        .bind(token_hash(token))
        .fetch_optional(&self.db)
        .await
        .map_err(ApiError::internal)?;
        // A token acts as its user; it has no CSRF token (it is never sent by a browser on its own).
        Ok(row.and_then(|(user, role)| {
            Some(Session { user, role: Role::parse(&role)?, csrf: String::new(), must_change_password: false })
        }))
    }

    pub(super) async fn list_users(&self) -> ApiResult<Vec<User>> {
        let rows: Vec<(String, String, i64, Option<String>)> =
            sqlx::query_as("SELECT name, role, must_change, locked_until FROM users ORDER BY name")
                .fetch_all(&self.db)
                .await
                .map_err(ApiError::internal)?;
        Ok(rows
            .into_iter()
            .filter_map(|(name, role, must, locked_until)| {
                Some(User { name, role: Role::parse(&role)?, must_change_password: must != 0, locked_until })
            })
            .collect())
    }

    pub(super) async fn add_user(&self, s: &Session, u: NewUser) -> ApiResult<User> {
        let valid = !u.name.is_empty()
            && u.name.len() <= 64
            && u.name.chars().all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c));
        if !valid {
            return Err(ApiError::field("name", "use 1-64 letters, digits and . _ - @"));
        }
        let role = Role::parse(&u.role)
            .ok_or_else(|| ApiError::field("role", format!("{:?}: use admin, operator or auditor", u.role)))?;
        if u.password.chars().count() < MIN_PASSWORD {
            return Err(ApiError::field("password", format!("must have at least {MIN_PASSWORD} characters")));
        }
        sqlx::query("INSERT INTO users (name, role, password_hash, must_change) VALUES ($1, $2, $3, 1)")
            .bind(&u.name)
            .bind(role.as_str())
            .bind(hash_password(&u.password)?)
            .execute(&self.db)
            .await
            .map_err(|e| match e {
                sqlx::Error::Database(d) if d.is_unique_violation() => {
                    ApiError::conflict(format!("name: a user {:?} exists already", u.name))
                }
                e => ApiError::internal(e),
            })?;
        self.audit_log(&s.user, "user added", &format!("{} ({})", u.name, role.as_str())).await?;
        Ok(User { name: u.name, role, must_change_password: true, locked_until: None })
    }

    /// Lets a locked-out user log in again at once.
    pub(super) async fn unlock_user(&self, s: &Session, name: &str) -> ApiResult<()> {
        let done = sqlx::query("UPDATE users SET failed_logins = 0, locked_until = NULL WHERE name = $1")
            .bind(name)
            .execute(&self.db)
            .await
            .map_err(ApiError::internal)?;
        if done.rows_affected() == 0 {
            return Err(ApiError::not_found(format!("user {name}")));
        }
        self.audit_log(&s.user, "user unlocked", name).await
    }

    /// Gives a user a new password that must be changed at the next login, unlocks the user and
    /// ends the user's sessions (a forgotten password is assumed known to someone else too).
    pub(super) async fn reset_password(&self, s: &Session, name: &str, r: PasswordReset) -> ApiResult<()> {
        if r.password.chars().count() < MIN_PASSWORD {
            return Err(ApiError::field("password", format!("must have at least {MIN_PASSWORD} characters")));
        }
        if name == s.user {
            return Err(ApiError::conflict("change your own password with POST /api/password"));
        }
        reset(&self.db, name, &r.password).await?;
        self.audit_log(&s.user, "password reset", name).await
    }

    pub(super) async fn remove_user(&self, s: &Session, name: &str) -> ApiResult<()> {
        if name == s.user {
            return Err(ApiError::conflict("you cannot delete your own user"));
        }
        let mut tx = super::catalog::begin_write(&self.db).await?;
        let id = user_id(&mut tx, name).await?;
        for table in ["sessions", "api_tokens"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE user_id = $1"))
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(ApiError::internal)?;
        }
        sqlx::query("DELETE FROM users WHERE id = $1").bind(id).execute(&mut *tx).await.map_err(ApiError::internal)?;
        tx.commit().await.map_err(ApiError::internal)?;
        self.audit_log(&s.user, "user deleted", name).await
    }

    pub(super) async fn list_tokens(&self, s: &Session) -> ApiResult<Vec<Token>> {
        let rows: Vec<(i64, String, String)> = sqlx::query_as(
            "SELECT t.id, t.name, t.created FROM api_tokens t JOIN users u ON u.id = t.user_id WHERE u.name = $1 ORDER BY t.id",
        )
        .bind(&s.user)
        .fetch_all(&self.db)
        .await
        .map_err(ApiError::internal)?;
        Ok(rows.into_iter().map(|(id, name, created)| Token { id, name, created, token: None }).collect())
    }

    pub(super) async fn add_token(&self, s: &Session, t: NewToken) -> ApiResult<Token> {
        if t.name.trim().is_empty() {
            return Err(ApiError::field("name", "must not be empty"));
        }
        let token = format!("hf_{}", random_hex(32));
        let created = now();
        let id = sqlx::query_as::<_, (i64,)>(
            "INSERT INTO api_tokens (user_id, name, token_hash, created) SELECT id, $1, $2, $3 FROM users WHERE name = $4 RETURNING id",
        )
        .bind(&t.name)
        .bind(token_hash(&token))
        .bind(&created)
        .bind(&s.user)
        .fetch_one(&self.db)
        .await
        .map_err(ApiError::internal)?
        .0;
        self.audit_log(&s.user, "API token created", &t.name).await?;
        Ok(Token { id, name: t.name, created, token: Some(token) })
    }

    pub(super) async fn remove_token(&self, s: &Session, id: i64) -> ApiResult<()> {
        let done =
            sqlx::query("DELETE FROM api_tokens WHERE id = $1 AND user_id = (SELECT id FROM users WHERE name = $2)")
                .bind(id)
                .bind(&s.user)
                .execute(&self.db)
                .await
                .map_err(ApiError::internal)?;
        if done.rows_affected() == 0 {
            return Err(ApiError::not_found(format!("API token {id} of user {}", s.user)));
        }
        self.audit_log(&s.user, "API token revoked", &id.to_string()).await
    }
}

/// Sets `name`'s password to `password`, to be changed at the next login; unlocks the user and
/// ends its sessions. Shared by the API and `holdfast reset-password` on the appliance's shell.
pub(super) async fn reset(db: &super::catalog::Db, name: &str, password: &str) -> ApiResult<()> {
    let mut tx = super::catalog::begin_write(db).await?;
    let id = user_id(&mut tx, name).await?;
    sqlx::query(
        "UPDATE users SET password_hash = $1, must_change = 1, failed_logins = 0, locked_until = NULL WHERE id = $2",
    )
    .bind(hash_password(password)?)
    .bind(id)
    .execute(&mut *tx)
    .await
    .map_err(ApiError::internal)?;
    sqlx::query("DELETE FROM sessions WHERE user_id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(ApiError::internal)?;
    tx.commit().await.map_err(ApiError::internal)
}

/// The id of user `name`, inside the caller's transaction; an unknown name is a 404.
async fn user_id(tx: &mut sqlx::Transaction<'_, sqlx::Any>, name: &str) -> ApiResult<i64> {
    let row: Option<(i64,)> = sqlx::query_as("SELECT id FROM users WHERE name = $1")
        .bind(name)
        .fetch_optional(&mut **tx)
        .await
        .map_err(ApiError::internal)?;
    row.map(|(id,)| id).ok_or_else(|| ApiError::not_found(format!("user {name}")))
}
