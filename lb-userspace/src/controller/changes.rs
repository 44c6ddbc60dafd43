//! What an apply changed, described once for the daemon's log and the CLI's answers.

use crate::model::TargetKey;

/// What an `apply` changed, for the log and the control API's answers.
#[derive(Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Changes {
    pub listeners_added: Vec<String>,
    pub listeners_removed: Vec<String>,
    pub tables_rebuilt: Vec<String>,
    pub targets_added: Vec<TargetKey>,
    pub targets_draining: Vec<TargetKey>,
    /// Target groups that now have no healthy target and send traffic to all (fail open).
    pub failing_open: Vec<String>,
    /// Target groups that have a healthy target again.
    pub failing_closed: Vec<String>,
    /// Everything else the model changed: http/https listeners and settings (one sentence
    /// each, see [`crate::model::diff`]).
    #[serde(default)]
    pub settings: Vec<String>,
    /// In store mode (`sluice run --store`): the store and the revision of the model that
    /// carries this change (every node applies it; a reload does not undo it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored: Option<(String, i64)>,
}

/// One change, in a sentence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    /// Something an operator should look at (a group failing open), not routine.
    pub warning: bool,
    pub text: String,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        *self == Changes::default()
    }

    /// One sentence per change, in the order they were made: what the daemon logs and what
    /// the CLI prints after a change.
    pub fn lines(&self) -> Vec<Line> {
        let info = |text: String| Line {
            warning: false,
            text,
        };
        let mut lines = Vec::new();
        for name in &self.listeners_added {
            lines.push(info(format!("listener '{name}' added")));
        }
        for name in &self.listeners_removed {
            lines.push(info(format!("listener '{name}' removed")));
        }
        for name in &self.tables_rebuilt {
            lines.push(info(format!("listener '{name}': Maglev table rebuilt")));
        }
        for key in &self.targets_added {
            lines.push(info(format!(
                "target {} of '{}' registered",
                key.addr, key.group
            )));
        }
        for key in &self.targets_draining {
            lines.push(info(format!(
                "target {} of '{}' draining: no new flows; its flows stay for the deregistration delay",
                key.addr, key.group
            )));
        }
        for group in &self.failing_open {
            lines.push(Line {
                warning: true,
                text: format!(
                    "target group '{group}' has no healthy target: failing open, traffic goes to all its targets"
                ),
            });
        }
        for group in &self.failing_closed {
            lines.push(info(format!(
                "target group '{group}' has a healthy target again: no longer failing open"
            )));
        }
        lines.extend(self.settings.iter().cloned().map(info));
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_change_has_a_line_and_failing_open_is_a_warning() {
        let key = TargetKey {
            group: "web".into(),
            addr: "10.0.1.10:80".parse().unwrap(),
        };
        let changes = Changes {
            listeners_added: vec!["a".into()],
            listeners_removed: vec!["b".into()],
            tables_rebuilt: vec!["a".into()],
            targets_added: vec![key.clone()],
            targets_draining: vec![key],
            failing_open: vec!["web".into()],
            failing_closed: vec!["api".into()],
            settings: vec!["listener 'web' (http) added on 192.0.2.10:80".into()],
            stored: None,
        };
        let lines = changes.lines();
        let texts: Vec<&str> = lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(
            texts,
            [
                "listener 'a' added",
                "listener 'b' removed",
                "listener 'a': Maglev table rebuilt",
                "target 10.0.1.10:80 of 'web' registered",
                "target 10.0.1.10:80 of 'web' draining: no new flows; its flows stay for the deregistration delay",
                "target group 'web' has no healthy target: failing open, traffic goes to all its targets",
                "target group 'api' has a healthy target again: no longer failing open",
                "listener 'web' (http) added on 192.0.2.10:80",
            ]
        );
        let warnings: Vec<bool> = lines.iter().map(|l| l.warning).collect();
        assert_eq!(
            warnings,
            [false, false, false, false, false, true, false, false]
        );
        assert!(Changes::default().lines().is_empty());
    }
}
