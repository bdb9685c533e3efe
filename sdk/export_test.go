package handoff

// SetTestHook installs the protocol-step hook in a test child process.
func SetTestHook(f func(step string)) { testHook = f }

// SetMaxVersion makes the SDK offer protocol versions up to v only, as an
// older SDK does.
func SetMaxVersion(v uint16) { maxVersion = v }
