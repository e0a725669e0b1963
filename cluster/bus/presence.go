package bus

// frontendHeader names the publishing frontend of an announcement or a
// presence notice (online.go), so that a Bus can skip its own.
const frontendHeader = "Mnm-Frontend"
