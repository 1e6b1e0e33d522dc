"""Contacts (联系人) of an account: the people at the customer, their buying roles, one primary per account."""
