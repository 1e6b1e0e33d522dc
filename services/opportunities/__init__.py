"""The opportunities service: owns accounts, contacts, opportunities, quotes, contracts."""
