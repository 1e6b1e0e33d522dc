"""The scoring service: owns lead scores, opportunity win probabilities, account tiers, models."""
