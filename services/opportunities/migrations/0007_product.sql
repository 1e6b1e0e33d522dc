-- The product (or product line) an opportunity is for, as given when it was opened; null: none given.
-- Carried in its events so the forecast can roll up by product.
ALTER TABLE opportunities ADD COLUMN product text;
