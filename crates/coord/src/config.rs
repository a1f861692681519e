//! Runtime settings at `config/<name>`: plain text, permanent, read by the scheduler at every step so
//! that a change takes effect without a restart.
use crate::{Coord, Result};

impl Coord {
    /// A setting's value, if it has been set.
    pub async fn get_config(&self, name: &str) -> Result<Option<String>> {
        let resp = self.client().get(self.keys().config(name), None).await?;
        Ok(resp
            .kvs()
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
    }

    /// Sets a setting.
    pub async fn put_config(&self, name: &str, value: &str) -> Result<()> {
        self.client()
            .put(self.keys().config(name), value, None)
            .await?;
        Ok(())
    }
}
