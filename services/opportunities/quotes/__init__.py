"""Quotes (报价) of an opportunity: line items, discounts, totals and the manager's approval."""
