"""Local stand-ins for third-party HTTP APIs (Supabase Storage, SendGrid) used by the tests.

They speak the documented wire format and are driven by the real client libraries.
"""
