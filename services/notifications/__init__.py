"""The notifications service: owns rules, inbox, push streams, webhooks, e-mail."""
