//! The selection flags commands share, flattened into each command's
//! arguments (as sqlx-cli does with its connect options): which sites and
//! servers, and which tables. The window flags are `window::WindowArgs`.

/// `--site NAME`… and `--server NAME`…
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Selection {
    /// Only this site (repeatable; default: all).
    #[arg(long = "site", value_name = "NAME")]
    pub sites: Vec<String>,
    /// Only this server (repeatable; default: all of each site's servers).
    #[arg(long = "server", value_name = "NAME")]
    pub servers: Vec<String>,
}

impl Selection {
    /// The (server name, site) pairs selected, site by site in config order.
    pub fn targets(
        &self,
        config: &crate::config::Config,
    ) -> Result<Vec<(String, crate::config::Site)>, crate::config::ConfigError> {
        Ok(config
            .site_servers(&self.sites, &self.servers)?
            .into_iter()
            .map(|(site, server)| (server.name.clone(), site.clone()))
            .collect())
    }

    /// Each selected (site, server) with the window `spec` makes of the
    /// site's local time: (site, server name, window).
    pub fn windows(
        &self,
        config: &crate::config::Config,
        spec: &crate::window::WindowSpec,
        now: chrono::DateTime<chrono::Utc>,
    ) -> crate::error::Result<Vec<(crate::config::Site, String, crate::window::Window)>> {
        let mut out = Vec::new();
        for (site, server) in config.site_servers(&self.sites, &self.servers)? {
            let window = spec.resolve(site.timezone, now)?;
            out.push((site.clone(), server.name.clone(), window));
        }
        Ok(out)
    }
}

/// `--table TABLE`…
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Tables {
    /// Only this table: bank, rack, pcs or etc (repeatable; default: all).
    #[arg(long = "table", value_name = "TABLE")]
    pub tables: Vec<String>,
}
