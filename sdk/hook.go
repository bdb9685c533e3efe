package handoff

// testHook, when set by this package's tests, is called at each protocol
// step so fault tests can kill or stall a process at an exact point.
var testHook func(step string)

func step(name string) {
	if testHook != nil {
		testHook(name)
	}
}
