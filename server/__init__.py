"""The real-time web server: Flask + Flask-SocketIO, one Session per connection."""
