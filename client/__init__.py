"""The fl-client daemon: dials the server, trains on local data through a Task."""
