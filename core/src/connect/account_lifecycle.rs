//! Every change of an account's state, in one function: `AccountState::after(event)`. Rows changed one by one
//! take its answer as a value; statements that change many rows (or rows they did not load) write `sql_after`,
//! the same function spelled as a SQL `CASE` over every state. The `email_accounts_state_changed` trigger then
//! turns each change into an `account.<state>` event.

use crate::model::AccountState;

/// What can happen to an account.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccountEvent {
    /// Created or saved through the API. A new account starts from `Draft` with `connection_changed`.
    Saved {
        enabled: bool,
        /// A grant of its token configuration already serves its login.
        has_grant: bool,
        /// Its server, login or credentials changed: a confirmation was for the old ones.
        connection_changed: bool,
    },
    /// A consent (or an app grant) now serves it.
    GrantLinked,
    /// Its grant was revoked: it needs a new consent.
    GrantRevoked,
    /// Its credentials were refused, or its grant needs re-consent.
    Failed,
    /// Test & confirm passed.
    Confirmed,
}

impl AccountState {
    /// The state after `event`. Only saving with `enabled` changes a disabled account.
    pub fn after(self, event: AccountEvent) -> AccountState {
        use AccountState::*;
        match (self, event) {
            (_, AccountEvent::Saved { enabled: false, .. }) => Disabled,
            (state, AccountEvent::Saved { has_grant, connection_changed, .. }) => {
                let state = if state == Disabled || connection_changed { Draft } else { state };
                if state == Draft && has_grant {
                    Authorized
                } else {
                    state
                }
            }
            (Disabled, _) => Disabled,
            (Draft | Error, AccountEvent::GrantLinked) => Authorized,
            (state, AccountEvent::GrantLinked) => state,
            (_, AccountEvent::GrantRevoked) => Draft,
            (_, AccountEvent::Failed) => Error,
            (_, AccountEvent::Confirmed) => Confirmed,
        }
    }
}

/// `AccountState::after(event)` as a SQL expression over the row's `state` column.
pub fn sql_after(event: AccountEvent) -> String {
    let arms: String = AccountState::ALL.iter().map(|state| format!(" WHEN '{}' THEN '{}'", state, state.after(event))).collect();
    format!("(CASE state{arms} ELSE state END)")
}

#[cfg(test)]
mod tests {
    use super::*;
    use AccountState::*;

    fn saved(enabled: bool, has_grant: bool, connection_changed: bool) -> AccountEvent {
        AccountEvent::Saved { enabled, has_grant, connection_changed }
    }

    #[test]
    fn a_new_account_is_draft_authorized_or_disabled() {
        assert_eq!(Draft.after(saved(true, false, true)), Draft);
        assert_eq!(Draft.after(saved(true, true, true)), Authorized);
        assert_eq!(Draft.after(saved(false, true, true)), Disabled);
    }

    #[test]
    fn saving_keeps_a_confirmation_only_for_the_same_connection() {
        assert_eq!(Confirmed.after(saved(true, true, false)), Confirmed);
        assert_eq!(Confirmed.after(saved(true, true, true)), Authorized);
        assert_eq!(Confirmed.after(saved(true, false, true)), Draft);
        assert_eq!(Error.after(saved(true, false, false)), Error);
        assert_eq!(Disabled.after(saved(true, false, false)), Draft, "re-enabling starts over");
        assert_eq!(Disabled.after(saved(true, true, false)), Authorized);
    }

    #[test]
    fn a_disabled_account_stays_disabled_whatever_happens_to_its_grant_or_server() {
        for event in [AccountEvent::GrantLinked, AccountEvent::GrantRevoked, AccountEvent::Failed, AccountEvent::Confirmed] {
            assert_eq!(Disabled.after(event), Disabled, "{event:?}");
        }
    }

    #[test]
    fn grants_and_probes_move_the_rest() {
        assert_eq!(Draft.after(AccountEvent::GrantLinked), Authorized);
        assert_eq!(Error.after(AccountEvent::GrantLinked), Authorized);
        assert_eq!(Confirmed.after(AccountEvent::GrantLinked), Confirmed);
        assert_eq!(Confirmed.after(AccountEvent::GrantRevoked), Draft);
        assert_eq!(Authorized.after(AccountEvent::Failed), Error);
        assert_eq!(Error.after(AccountEvent::Confirmed), Confirmed);
    }

    #[test]
    fn the_sql_spells_the_same_function() {
        assert_eq!(
            sql_after(AccountEvent::GrantLinked),
            "(CASE state WHEN 'draft' THEN 'authorized' WHEN 'authorized' THEN 'authorized' WHEN 'confirmed' THEN 'confirmed' \
             WHEN 'error' THEN 'authorized' WHEN 'disabled' THEN 'disabled' ELSE state END)"
        );
    }
}
