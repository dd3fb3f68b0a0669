//! Who may ask what: per project, the datasets and columns it may use and the roles a
//! researcher needs. Checked at the node against the researcher's verified token, never on
//! the coordinator's word.

use crate::Policy;
use serde::Deserialize;
use std::collections::BTreeMap;
use verbund_proto::v1 as pb;

/// One `[[project]]` of a site policy.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectRule {
    pub name: String,
    /// The researcher needs one of these roles; empty: any role.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Datasets the project may query; "*" for all.
    pub datasets: Vec<String>,
    /// Per dataset, the only columns the project may use (all columns when absent).
    #[serde(default)]
    pub columns: BTreeMap<String, Vec<String>>,
    /// What the project's research is for (e.g. "academic", "commercial"): patients who
    /// objected to this purpose (a FHIR Consent deny provision with this purpose) are not
    /// counted in any of its answers. Without it, only objections to the project by name apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
}

impl ProjectRule {
    /// The rule of `project`, if the policy has one.
    pub fn of<'a>(rules: &'a [ProjectRule], project: &str) -> Option<&'a ProjectRule> {
        rules.iter().find(|r| r.name == project)
    }

    pub fn everything(project: &str) -> Self {
        Self {
            name: project.into(),
            roles: vec![],
            datasets: vec!["*".into()],
            columns: BTreeMap::new(),
            purpose: None,
        }
    }
}

/// A researcher's verified request for access: from the token, and the project they ask in.
#[derive(Debug, Clone, PartialEq)]
pub struct Access<'a> {
    pub site: &'a str,
    pub project: &'a str,
    pub token_projects: &'a [String],
    pub roles: &'a [String],
}

impl Policy {
    /// Whether `access` may read `columns` of `dataset`. The refusal names the project,
    /// dataset, column or role: what an honest researcher needs to ask the site for.
    pub fn authorize(&self, access: &Access<'_>, dataset: &str, columns: &[&str]) -> Result<(), AccessDenied> {
        let project = access.project.to_string();
        if project.is_empty() {
            return Err(AccessDenied::NoProject);
        }
        if !access.token_projects.contains(&project) {
            return Err(AccessDenied::NotGranted { project });
        }
        let site = access.site.to_string();
        let Some(rule) = self.projects.iter().find(|r| r.name == project) else {
            return Err(AccessDenied::Project { project, site });
        };
        if !rule.roles.is_empty() && !rule.roles.iter().any(|r| access.roles.contains(r)) {
            return Err(AccessDenied::Role { project, site, roles: rule.roles.clone() });
        }
        let dataset = dataset.to_string();
        if !rule.datasets.iter().any(|d| d == "*" || *d == dataset) {
            return Err(AccessDenied::Dataset { project, site, dataset });
        }
        let allowed = rule.columns.get(&dataset);
        if let Some(column) = columns.iter().find(|c| allowed.is_some_and(|a| !a.iter().any(|n| n == *c))) {
            return Err(AccessDenied::Column { project, site, dataset, column: column.to_string() });
        }
        Ok(())
    }
}

/// Why a site's policy does not let a researcher ask: what an honest researcher needs to
/// ask the site for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessDenied {
    #[error("the query names no project; ask within one of your token's projects")]
    NoProject,
    #[error("your token does not grant project '{project}'")]
    NotGranted { project: String },
    #[error("project '{project}' is not allowed at site {site}")]
    Project { project: String, site: String },
    #[error("project '{project}' at site {site} needs one of the roles: {}", roles.join(", "))]
    Role { project: String, site: String, roles: Vec<String> },
    #[error("project '{project}' may not query dataset '{dataset}' at site {site}")]
    Dataset { project: String, site: String, dataset: String },
    #[error("project '{project}' may not use column '{column}' of dataset '{dataset}' at site {site}")]
    Column { project: String, site: String, dataset: String, column: String },
}

impl Policy {
    /// A column's declared levels as literals: public by declaration, so they travel in the
    /// catalogue (a model's categorical levels need no data round when they are declared).
    fn declared_literals(&self, dataset: &str, column: &str) -> Vec<pb::Literal> {
        use crate::profile::Level;
        use pb::literal::Value;
        let Some(levels) = self.datasets.iter().find(|d| d.name == dataset).and_then(|d| d.levels.get(column)) else {
            return Vec::new();
        };
        levels
            .iter()
            .map(|level| pb::Literal {
                value: Some(match level {
                    Level::Bool(b) => Value::Bool(*b),
                    Level::Int(i) => Value::Int64(*i),
                    Level::Text(t) => Value::String(t.clone()),
                }),
            })
            .collect()
    }

    /// Per project this policy names, the part of `catalogue` the project may use: its
    /// datasets, each with the allowed columns (and always the patient key, usable only
    /// as `count(DISTINCT ...)`). Researchers are shown only their project's view.
    pub fn project_views(&self, catalogue: &pb::Catalogue) -> Vec<pb::ProjectView> {
        self.projects
            .iter()
            .map(|rule| {
                let datasets = catalogue
                    .datasets
                    .iter()
                    .filter(|d| rule.datasets.iter().any(|r| r == "*" || *r == d.name))
                    .map(|d| {
                        let allowed = rule.columns.get(&d.name);
                        let columns = d
                            .columns
                            .iter()
                            .filter(|c| c.name == d.patient_key || allowed.is_none_or(|a| a.contains(&c.name)))
                            .map(|c| pb::ColumnInfo { levels: self.declared_literals(&d.name, &c.name), ..c.clone() })
                            .collect();
                        pb::DatasetInfo {
                            name: d.name.clone(),
                            patient_key: d.patient_key.clone(),
                            columns,
                            model: d.model.clone(),
                        }
                    })
                    .collect();
                pb::ProjectView { project: rule.name.clone(), catalogue: Some(pb::Catalogue { datasets }) }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"
min_cell_size = 5

[[project]]
name = "diabetes"
roles = ["researcher"]
datasets = ["patients", "conditions"]
columns = { patients = ["sex", "age"] }
"#;

    fn access<'a>(project: &'a str, token: &'a [String], roles: &'a [String]) -> Access<'a> {
        Access { site: "uniklinik-nord", project, token_projects: token, roles }
    }

    #[test]
    fn projects_roles_datasets_and_columns_are_enforced() {
        let p = Policy::from_toml(POLICY).unwrap();
        let token = vec!["diabetes".to_string()];
        let roles = vec!["researcher".to_string()];
        let ok = access("diabetes", &token, &roles);
        assert!(p.authorize(&ok, "patients", &["sex", "age"]).is_ok());
        assert!(p.authorize(&ok, "conditions", &["icd10"]).is_ok(), "no column list: all columns");
        let e = p.authorize(&ok, "patients", &["region"]).unwrap_err();
        assert!(matches!(&e, AccessDenied::Column { column, .. } if column == "region"));
        let e = e.to_string();
        assert!(e.contains("column 'region'"), "{e}");
        assert!(p.authorize(&ok, "observations", &[]).unwrap_err().to_string().contains("dataset 'observations'"));
        let no_role: Vec<String> = vec![];
        assert!(matches!(
            p.authorize(&access("diabetes", &token, &no_role), "patients", &[]),
            Err(AccessDenied::Role { .. })
        ));
        let other = vec!["oncology".to_string()];
        assert!(
            p.authorize(&access("oncology", &other, &roles), "patients", &[])
                .unwrap_err()
                .to_string()
                .contains("not allowed at site")
        );
        assert!(
            p.authorize(&access("oncology", &token, &roles), "patients", &[]).unwrap_err()
                == AccessDenied::NotGranted { project: "oncology".into() }
        );
    }

    #[test]
    fn a_project_sees_only_what_it_may_use() {
        let p = Policy::from_toml(POLICY).unwrap();
        let col =
            |n: &str| pb::ColumnInfo { name: n.into(), r#type: pb::ColumnType::String as i32, levels: Vec::new() };
        let dataset = |name: &str, cols: &[&str]| pb::DatasetInfo {
            name: name.into(),
            patient_key: "pid".into(),
            columns: cols.iter().map(|c| col(c)).collect(),
            model: String::new(),
        };
        let catalogue = pb::Catalogue {
            datasets: vec![
                dataset("patients", &["pid", "sex", "age", "region"]),
                dataset("conditions", &["pid", "icd10"]),
                dataset("genomes", &["pid", "variant"]),
            ],
        };
        let views = p.project_views(&catalogue);
        assert_eq!(views.len(), 1);
        assert_eq!(views[0].project, "diabetes");
        let seen = views[0].catalogue.clone().unwrap();
        let names: Vec<&str> = seen.datasets.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["patients", "conditions"], "genomes is not the project's");
        let cols: Vec<&str> = seen.datasets[0].columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(cols, ["pid", "sex", "age"], "region is not allowed; the patient key stays");
        assert_eq!(seen.datasets[1].columns.len(), 2, "no column list: every column");
    }

    #[test]
    fn no_rule_means_no_access() {
        let p = Policy::default();
        let token = vec!["any".to_string()];
        assert!(p.authorize(&access("any", &token, &[]), "patients", &[]).is_err());
        assert!(p.clone().allowing("any").authorize(&access("any", &token, &[]), "patients", &["x"]).is_ok());
    }

    #[test]
    fn duplicate_or_empty_rules_are_refused() {
        let twice = format!("{POLICY}\n[[project]]\nname = \"diabetes\"\ndatasets = [\"*\"]\n");
        assert!(Policy::from_toml(&twice).unwrap_err().to_string().contains("two rules"));
        assert!(Policy::from_toml("[[project]]\nname = \"x\"\ndatasets = []\n").is_err());
    }
}
