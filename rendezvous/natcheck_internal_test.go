package rendezvous

import (
	"bytes"
	"testing"
)

func TestNATClassification(t *testing.T) {
	for _, tc := range []struct {
		same, otherIP   bool
		mapping, filter NATBehavior
	}{
		{true, true, NATEndpointIndependent, NATEndpointIndependent},
		{true, false, NATNotPortDependent, NATNotPortDependent},
		{false, true, NATEndpointDependent, NATEndpointDependent},
		{false, false, NATAddressAndPortDependent, NATAddressAndPortDependent},
	} {
		if got := mappingBehavior(tc.same, tc.otherIP); got != tc.mapping {
			t.Errorf("mapping(same=%v, otherIP=%v) = %s, want %s", tc.same, tc.otherIP, got, tc.mapping)
		}
		// For filtering, "same" reads "answered".
		if got := filteringBehavior(tc.same, tc.otherIP); got != tc.filter {
			t.Errorf("filtering(answered=%v, otherIP=%v) = %s, want %s", tc.same, tc.otherIP, got, tc.filter)
		}
	}
	for _, tc := range []struct {
		r    NATReport
		want string
	}{
		{NATReport{Mapping: NATEndpointIndependent}, "no NAT: "},
		{NATReport{Mapping: NATEndpointIndependent, Filtering: NATAddressAndPortDependent}, "no NAT, but a firewall"},
		{NATReport{NAT: true, Mapping: NATEndpointIndependent}, "endpoint-independent mapping: direct connections work with most peers"},
		{NATReport{NAT: true, Mapping: NATNotPortDependent}, "likely work"},
		{NATReport{NAT: true, Mapping: NATAddressAndPortDependent}, "symmetric NAT"},
		{NATReport{NAT: true, Mapping: NATEndpointDependent}, "will use the relay"},
		{NATReport{NAT: true, Mapping: NATUnknown}, "could not be tested"},
	} {
		if got := verdict(tc.r); !bytes.Contains([]byte(got), []byte(tc.want)) {
			t.Errorf("verdict(%+v) = %q, want it to contain %q", tc.r, got, tc.want)
		}
	}
}
