-- The W3C trace context of the event that caused a notification, shown with it (push and inbox).
ALTER TABLE notifications ADD COLUMN traceparent text;
