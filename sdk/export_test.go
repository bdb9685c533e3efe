package handoff

// SetTestHook installs the protocol-step hook in a test child process.
func SetTestHook(f func(step string)) { testHook = f }
